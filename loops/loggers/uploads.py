"""Which checkpoint files a logger with `log_model` still has to upload: the callback's last, best and top-k files
that exist and changed since the logger last uploaded them, oldest first."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor


def checkpoints_to_upload(callback: Any, uploaded: dict[str, float]) -> list[tuple[float, str, Any, str]]:
    """`[(mtime, path, score, tag), ...]` with tag "latest", "best" or "best_k"; `uploaded` maps path -> mtime."""
    found: dict[str, tuple[Any, str]] = {}
    if getattr(callback, "last_model_path", ""):
        found[callback.last_model_path] = (getattr(callback, "current_score", None), "latest")
    if getattr(callback, "best_model_path", ""):
        found[callback.best_model_path] = (getattr(callback, "best_model_score", None), "best")
    for path, score in getattr(callback, "best_k_models", {}).items():
        found[path] = (score, "best_k")
    files = sorted((Path(path).stat().st_mtime, path, score, tag) for path, (score, tag) in found.items()
                   if Path(path).is_file())
    return [entry for entry in files if entry[1] not in uploaded or uploaded[entry[1]] < entry[0]]


def checkpoint_metadata(callback: Any, path: str, score: Any) -> dict[str, Any]:
    """What is stored next to an uploaded checkpoint: its score, file name and the callback's settings."""
    settings = {name: getattr(callback, name) for name in ("monitor", "mode", "save_last", "save_top_k",
                                                           "save_weights_only") if hasattr(callback, name)}
    return {"score": score.item() if isinstance(score, Tensor) else score, "original_filename": Path(path).name,
            type(callback).__name__: settings}
