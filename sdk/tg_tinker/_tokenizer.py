"""Build a Hugging Face tokenizer from the files the server sends, offline.

``GET /v1/training_runs/{id}/tokenizer`` returns ``TokenizerFiles`` (file name →
text). They are written once into a content-addressed cache directory
(``$TG_TINKER_CACHE_DIR``, else ``$XDG_CACHE_HOME/tg_tinker``, else
``~/.cache/tg_tinker``) and loaded with ``local_files_only=True``, so no model hub
is ever contacted. ``transformers`` is imported only here, only when asked.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from tg_tinker.errors import ServerError
from tg_tinker.types import TokenizerFiles

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def cache_root() -> Path:
    """The SDK's cache directory (not created)."""
    explicit = os.environ.get("TG_TINKER_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "tg_tinker"


def _check_name(name: str) -> str:
    # Names come from the server and become paths: allow plain file names only.
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or name != os.path.basename(name)
    ):
        raise ServerError(f"the server sent a tokenizer file with an unsafe name: {name!r}")
    return name


def materialize(files: TokenizerFiles, root: Path | None = None) -> Path:
    """Write the files into ``<root>/tokenizers/<digest>/`` (once) and return that directory."""
    if not files.files:
        raise ServerError("the server sent no tokenizer files")
    names = sorted(_check_name(n) for n in files.files)
    digest = hashlib.sha256(
        json.dumps({n: files.files[n] for n in names}, sort_keys=True).encode()
    ).hexdigest()[:32]
    parent = (root or cache_root()) / "tokenizers"
    final = parent / digest
    if final.is_dir():
        return final
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=f".{digest}."))
    try:
        for name in names:
            (staging / name).write_text(files.files[name], encoding="utf-8")
        try:
            staging.rename(final)
        except OSError:
            if not final.is_dir():  # lost a race to another process: theirs is identical
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def load_tokenizer(directory: Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer from ``directory`` with ``transformers`` (imported here)."""
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise ImportError(
            "get_tokenizer() needs the 'transformers' package, which the SDK does not "
            "install: pip install transformers"
        ) from exc
    tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
        str(directory), local_files_only=True
    )
    return tokenizer
