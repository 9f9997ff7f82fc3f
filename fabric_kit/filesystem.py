"""`get_filesystem`: the fsspec filesystem a path or URL lives on (`s3://`, `memory://`, local paths), as
Lightning's. fsspec is a dependency of torch, so it is normally installed; it is imported on first use."""
from __future__ import annotations

import os
from typing import Any

__all__ = ["get_filesystem", "is_url"]


def is_url(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a URL (`s3://bucket/x`, `memory://x`) rather than a local path."""
    return "://" in str(path)


def get_filesystem(path: str | os.PathLike[str], **kwargs: Any) -> Any:
    """The `fsspec.AbstractFileSystem` for `path`; `kwargs` are the filesystem's options (credentials, ...)."""
    try:
        from fsspec.core import url_to_fs  # type: ignore[import-untyped]
    except ImportError as missing:
        kind = "the URL" if is_url(path) else "the path"
        raise ModuleNotFoundError(f"get_filesystem({str(path)!r}) needs fsspec to open {kind}: "
                                  "pip install fsspec") from missing
    filesystem, _ = url_to_fs(str(path), **kwargs)
    return filesystem
