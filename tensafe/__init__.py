"""TenSafe core library: models, per-example losses, DP-SGD, encrypted artifacts.

This package never imports web or database code; the server (``server/``) builds
on it and the client SDK (``tg_tinker``) imports nothing of it.
"""

from tensafe.errors import TenSafeError

__version__ = "0.1.0"

__all__ = ["TenSafeError", "__version__"]
