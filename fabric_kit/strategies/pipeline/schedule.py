"""One batch through this rank's pipeline stages: torch.distributed.pipelining's schedule runs the micro-batches'
forward and backward passes, and the batch's mean loss reaches every rank of the pipeline."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B
from torch.nn import Module

SCHEDULES: dict[str, type[Any]] = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B,
                                   "interleaved_1f1b": ScheduleInterleaved1F1B}
"""The schedule names `ModelParallelStrategy(pipeline_schedule=...)` accepts; "interleaved_1f1b" runs several stages
per rank, the others one."""

MULTI_STAGE = {"interleaved_1f1b"}


def check_schedule_name(schedule: str) -> None:
    """A name that is not in `SCHEDULES` is a ValueError listing them."""
    if schedule not in SCHEDULES:
        raise ValueError(f"pipeline_schedule={schedule!r} is not a schedule; accepted: {', '.join(SCHEDULES)}")


def check_schedule(schedule: str, stages: int, pipeline_size: int) -> int:
    """The number of stages each rank runs, for `stages` stages over `pipeline_size` ranks; a schedule name or a
    stage count the schedule cannot run is a ValueError naming it and what is accepted."""
    check_schedule_name(schedule)
    per_rank, rest = divmod(stages, pipeline_size)
    if rest or not per_rank:
        raise ValueError(f"{stages} pipeline stages cannot be spread over pipeline_parallel_size={pipeline_size}; "
                         f"accepted: a multiple of {pipeline_size} stages (split points + 1, or the stages a "
                         "pipeline_split function returns)")
    if schedule in MULTI_STAGE and per_rank < 2:
        raise ValueError(f"pipeline_schedule={schedule!r} runs several stages per rank, but {stages} stages over "
                         f"{pipeline_size} ranks give each one; accepted: at least {2 * pipeline_size} stages, or "
                         "a one-stage schedule (gpipe, 1f1b)")
    if schedule not in MULTI_STAGE and per_rank != 1:
        raise ValueError(f"pipeline_schedule={schedule!r} runs one stage per rank, but {stages} stages over "
                         f"{pipeline_size} ranks give each {per_rank}; accepted: {pipeline_size} stages "
                         f"({pipeline_size - 1} split points), or 'interleaved_1f1b'")
    return per_rank


class PipelinedModel(Module):
    """This rank's stages of a pipelined model (the modules `parallelize_fn` set up), run batch by batch by
    `forward_backward`. Calling it is an error: a pipeline's forward and backward run together in the schedule.
    `convert_output` (the precision's) turns the last stage's output into what the loss function receives."""

    def __init__(self, stages: Sequence[Module], indices: Sequence[int], num_stages: int, schedule: str,
                 microbatches: int, group: dist.ProcessGroup, device: torch.device,
                 convert_output: Callable[[Any], Any]) -> None:
        super().__init__()
        self._convert_output = convert_output
        self.stages = torch.nn.ModuleList(stages)
        self._pipeline = [PipelineStage(stage, index, num_stages, device, group=group)
                          for stage, index in zip(stages, indices, strict=True)]
        self._schedule_name, self._microbatches, self._group = schedule, microbatches, group
        self._first, self._last = 0 in indices, num_stages - 1 in indices
        self._device = device
        self._schedule: tuple[Callable[..., Tensor], Any] | None = None  # built for the last loss function

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a pipelined model cannot be called: its stages run on different ranks and the "
                           "schedule runs forward and backward together; replace `loss = loss_fn(model(x), y); "
                           "fabric.backward(loss)` by `loss = fabric.forward_backward(model, x, y, loss_fn=loss_fn)`")

    def forward_backward(self, inputs: tuple[Any, ...], target: Any, loss_fn: Callable[..., Tensor]) -> Tensor:
        """Run the schedule over one batch (split into the micro-batches along dim 0); returns the batch's mean
        loss, detached, on every rank of the pipeline (from the last stage)."""
        batch = inputs[0].shape[0] if inputs and isinstance(inputs[0], Tensor) else None
        if batch is None or batch % self._microbatches:
            raise ValueError(f"pipeline_microbatches={self._microbatches} does not divide the batch of "
                             f"{batch} samples (the first input's dim 0); accepted: batches whose size is a "
                             f"multiple of {self._microbatches}")
        if self._schedule is None or self._schedule[0] is not loss_fn:
            def converted_loss(output: Any, target: Any) -> Tensor:
                return loss_fn(self._convert_output(output), target)

            stages = self._pipeline if self._schedule_name in MULTI_STAGE else self._pipeline[0]
            self._schedule = loss_fn, SCHEDULES[self._schedule_name](stages, self._microbatches,
                                                                     loss_fn=converted_loss)
        schedule = self._schedule[1]
        losses: list[Tensor] = []
        schedule.step(*(inputs if self._first else ()), target=target if self._last else None,
                      losses=losses if self._last else None, return_outputs=False)
        loss = (torch.stack(losses).mean().detach() if self._last
                else torch.empty((), device=self._device))
        dist.broadcast(loss, group=self._group, group_src=dist.get_world_size(self._group) - 1)
        return loss
