"""Which stage function runs (`fn`: fit, validate, test, predict), which loop is active (`stage`), and how the
run ended (`status`)."""
from __future__ import annotations


class TrainerState:
    def __init__(self) -> None:
        self.fn: str | None = None
        self.stage: str | None = None
        self.status = "initializing"

    def set_stage(self, stage: str, active: bool) -> None:
        if active:
            self.stage = stage
        elif self.stage == stage:
            self.stage = "train" if stage in ("validate", "sanity_check") and self.fn == "fit" else None

    def __repr__(self) -> str:
        return f"TrainerState(fn={self.fn!r}, stage={self.stage!r}, status={self.status!r})"
