"""GradientAccumulationScheduler: change `accumulate_grad_batches` by epoch, e.g. {0: 8, 4: 4, 8: 1} accumulates 8
batches per optimizer step in epochs 0-3, 4 in epochs 4-7 and none from epoch 8 on."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loops.callbacks.callback import Callback

if TYPE_CHECKING:
    from loops.trainer.trainer import Trainer


class GradientAccumulationScheduler(Callback):
    """`scheduling`: {first epoch: batches per optimizer step}; epochs before the first key accumulate 1.
    Needs automatic optimization and the Trainer's own `accumulate_grad_batches` left at 1."""

    def __init__(self, scheduling: dict[int, int]) -> None:
        if not isinstance(scheduling, dict) or not scheduling:
            raise ValueError(f"GradientAccumulationScheduler(scheduling={scheduling!r}) is not valid; pass a "
                             "non-empty dict {epoch: batches}, e.g. {0: 4, 10: 1}")
        for epoch, factor in scheduling.items():
            if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
                raise ValueError(f"GradientAccumulationScheduler: epoch {epoch!r} is not valid; keys are ints >= 0")
            if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
                raise ValueError(f"GradientAccumulationScheduler: {factor!r} batches for epoch {epoch} is not "
                                 "valid; values are ints >= 1")
        self.scheduling = {0: 1, **scheduling} if 0 not in scheduling else dict(scheduling)
        self.epochs = sorted(self.scheduling)

    def going_to_accumulate_grad_batches(self) -> bool:
        return any(factor > 1 for factor in self.scheduling.values())

    def get_accumulate_grad_batches(self, epoch: int) -> int:
        """The factor of the last scheduled epoch at or before `epoch`."""
        return self.scheduling[max(e for e in self.epochs if e <= epoch)]

    def on_train_start(self, trainer: Trainer, pl_module: Any) -> None:
        if not pl_module.automatic_optimization:
            raise RuntimeError("GradientAccumulationScheduler needs automatic optimization; with manual "
                               "optimization step the optimizer every N batches yourself")
        if trainer.accumulate_grad_batches != 1:
            raise ValueError(f"Trainer(accumulate_grad_batches={trainer.accumulate_grad_batches}) and "
                             "GradientAccumulationScheduler both set the accumulation; remove one of them")

    def on_train_epoch_start(self, trainer: Trainer, pl_module: Any) -> None:
        trainer.accumulate_grad_batches = self.get_accumulate_grad_batches(trainer.current_epoch)
