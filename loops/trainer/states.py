"""The Trainer's stage flags with Lightning's enum values (importable from where Lightning has them,
`lightning.pytorch.trainer.states`): `trainer.state.status` / `.fn` / `.stage`. Each enum is a `str`, so
`trainer.state.fn == "fit"` holds as in Lightning; comparison ignores case, as Lightning's does."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class _StrEnum(str, Enum):
    def __eq__(self, other: object) -> bool:
        other = other.value if isinstance(other, Enum) else other
        return isinstance(other, str) and self.value.lower() == other.lower()

    def __hash__(self) -> int:
        return hash(self.value.lower())

    def __str__(self) -> str:
        return self.value


class TrainerStatus(_StrEnum):
    """How far the Trainer's last stage call came."""

    INITIALIZING = "initializing"
    RUNNING = "running"
    FINISHED = "finished"
    INTERRUPTED = "interrupted"

    @property
    def stopped(self) -> bool:
        return self in (TrainerStatus.FINISHED, TrainerStatus.INTERRUPTED)


class TrainerFn(_StrEnum):
    """The stage function called: `fit`, `validate`, `test` or `predict`."""

    FITTING = "fit"
    VALIDATING = "validate"
    TESTING = "test"
    PREDICTING = "predict"


class RunningStage(_StrEnum):
    """The loop running now; under `fit`: train, sanity_check or validate."""

    TRAINING = "train"
    SANITY_CHECKING = "sanity_check"
    VALIDATING = "validate"
    TESTING = "test"
    PREDICTING = "predict"

    @property
    def evaluating(self) -> bool:
        return self in (RunningStage.VALIDATING, RunningStage.TESTING, RunningStage.SANITY_CHECKING)

    @property
    def dataloader_prefix(self) -> str:
        """The dataloader hook's prefix: "val" for validation and the sanity check, else the stage's value."""
        return "val" if self in (RunningStage.VALIDATING, RunningStage.SANITY_CHECKING) else self.value


@dataclass
class TrainerState:
    """Which stage function runs (`fn`), which loop is active (`stage`) and how the run ended (`status`)."""

    fn: TrainerFn | None = None
    stage: RunningStage | None = None
    status: TrainerStatus = TrainerStatus.INITIALIZING

    @property
    def finished(self) -> bool:
        return self.status == TrainerStatus.FINISHED

    @property
    def stopped(self) -> bool:
        return self.status.stopped

    def set_stage(self, stage: str, active: bool) -> None:
        if active:
            self.stage = RunningStage(stage)
        elif self.stage == stage:
            fitting = stage in ("validate", "sanity_check") and self.fn == TrainerFn.FITTING
            self.stage = RunningStage.TRAINING if fitting else None
