"""The plot of a canary audit: scores of included vs excluded canaries (base64 PNG).

Two overlaid histograms on shared bins. Under a private step the two overlap heavily
(the noise hides whether a canary was there); when they separate, membership can be
guessed, and the ε lower bound rises with the separation.
"""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")  # before pyplot: never needs a display
import matplotlib.pyplot as plt
import numpy as np

from tensafe.audit.canary_result import CanaryAuditResult

_INCLUDED = "#c0392b"
_EXCLUDED = "#1f5fa8"


def canary_scores_png(result: CanaryAuditResult) -> str:
    """The histograms of ``result``'s included and excluded scores, as base64 PNG.

    Raises:
        ValueError: the result holds no scores (nothing to draw).
    """
    included = np.asarray(result.included_scores, dtype=np.float64)
    excluded = np.asarray(result.excluded_scores, dtype=np.float64)
    if included.size + excluded.size == 0:
        raise ValueError("the audit result holds no scores")
    both = np.concatenate([included, excluded])
    bins = np.histogram_bin_edges(both, bins=min(60, max(10, both.size // 15)))
    fig, ax = plt.subplots(figsize=(8.0, 3.2), dpi=110, layout="constrained")
    ax.hist(excluded, bins=bins, color=_EXCLUDED, alpha=0.55,
            label=f"excluded canaries ({excluded.size})")  # fmt: skip
    ax.hist(included, bins=bins, color=_INCLUDED, alpha=0.55,
            label=f"included canaries ({included.size})")  # fmt: skip
    ax.set_xlabel("score: the canary's coordinate of the total released update (units of C)",
                  fontsize=8)  # fmt: skip
    ax.set_ylabel("canaries", fontsize=8)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(True, color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=8, colors="#444444")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


__all__ = ["canary_scores_png"]
