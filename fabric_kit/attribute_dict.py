"""`AttributeDict`: a dict whose keys read and write as attributes too (`hparams.lr`), as Lightning's."""
from __future__ import annotations

from typing import Any


class AttributeDict(dict):  # type: ignore[type-arg]
    """A dict whose keys are attributes too: `d.lr` is `d["lr"]`, `d.lr = 0.1` sets it, `del d.lr` removes it; a
    missing one is an `AttributeError` naming the keys there are. Its repr is one `"key": value` row per key."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as err:
            raise AttributeError(f"no attribute {key!r}; keys: {sorted(map(str, self))}") from err

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __delattr__(self, key: str) -> None:
        try:
            del self[key]
        except KeyError as err:
            raise AttributeError(f"no attribute {key!r}; keys: {sorted(map(str, self))}") from err

    def __repr__(self) -> str:
        if not self:
            return ""
        width = max(len(str(key)) for key in self) + 3
        labels = {key: f'"{key}":' for key in self}
        return "\n".join(f"{labels[key]:{width}} {self[key]}" for key in sorted(self, key=str))
