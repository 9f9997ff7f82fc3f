"""Loss-spike detection for Fabric loops, with Lightning's `SpikeDetection` arguments and decided by every rank
together: each step the ranks' losses are all-gathered, so every rank holds the same statistics and reaches the same
verdict (a spike on one rank is acted on by all; no rank-0 decision that leaves the others in another collective).

On a spike, `on_spike="raise"` does what Lightning does: it writes the indices of the offending batches (the
spiking one and the one before it, which may have corrupted the weights) to `exclude_batches_path` and raises
`TrainingSpikeException`. `on_spike="rollback"` restores the newest checkpoint saved (with `save`) before the
offending batches were trained on, weights, optimizer, RNG and loader position included, leaves exactly their
samples out of the loader and lets the loop continue; `skipped_samples.json` in the checkpoint directory lists what
was skipped; `load` resumes a restarted run with those samples still left out. The run then ends with the
weights of a run whose loader never yielded those samples::

    spike = SpikeDetection(on_spike="rollback", checkpoint_dir="checkpoints")
    state = {"model": model, "optimizer": optimizer, "loader": loader, "step": 0}
    while state["step"] < max_steps:
        for batch in loader:
            loss = ...  # forward, fabric.backward(loss), optimizer.step()
            spike.on_train_batch_end(fabric, loss, batch, state["step"], state=state)
            if spike.rolled_back:  # `state` holds the checkpoint's values; the loader resumes from there
                break
            state["step"] += 1
            if state["step"] % 100 == 0:
                spike.save(fabric, state)
"""
from __future__ import annotations

import json
import os
import re
import shutil
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from fabric_kit.wrappers import FabricDataLoader

if TYPE_CHECKING:
    from fabric_kit.fabric import Fabric

ON_SPIKE = ("raise", "rollback")
"""The accepted `on_spike` values."""
STATE_KEY = "spike_detection"
"""The checkpoint entry `SpikeDetection.save` keeps the detector's own statistics in."""
RECORD_NAME = "skipped_samples.json"
_CHECKPOINT_NAME = re.compile(r"^epoch=(\d+)-samples=(\d+)\.ckpt$")


class TrainingSpikeException(RuntimeError):
    """Raised on every rank when a loss spike was detected (and, in rollback mode, nothing can be rolled back)."""

    def __init__(self, batch_idx: int, *args: Any) -> None:
        super().__init__(f"Training spike detected in batch {batch_idx}", *args)


class SpikeDetection:
    """Detect loss spikes against a running mean of each rank's loss, on all ranks together.

    Args:
        mode: "min" (a loss: higher is worse) or "max".
        window: how many recent values the running mean takes.
        warmup: detection starts at this `batch_idx`.
        atol: a value farther than `atol` from the running mean, and not better than the last value, is a spike
            (None: no absolute condition).
        rtol: ... farther than `rtol * running mean` (None: no relative condition); both must hold when given.
        exclude_batches_path: the JSON file (or the directory for `skip_batches.json`; default the working
            directory) listing the indices of the batches to exclude, as Lightning writes it.
        finite_only: as Lightning's code does it: True makes a NaN or infinite loss a spike; False judges it as
            any value (an infinite one in the bad direction is a spike, NaN is not), never adding it to the
            statistics.
        on_spike: "raise" (`TrainingSpikeException`, as Lightning) or "rollback" (restore the last checkpoint from
            `save` before the offending batches and continue without their samples).
        checkpoint_dir: where `save` writes the checkpoints a rollback restores and where the record of skipped
            samples goes; required with "rollback".

    The loss must be one number per rank. Spikes are judged per rank (as Lightning's, each rank against its own
    running mean) from the gathered losses, so every rank decides the same; the ranks that spiked are recorded.
    """

    def __init__(self, mode: Literal["min", "max"] = "min", window: int = 10, warmup: int = 1,
                 atol: float | None = None, rtol: float | None = 2.0,
                 exclude_batches_path: str | os.PathLike[str] | None = None, finite_only: bool = True, *,
                 on_spike: Literal["raise", "rollback"] = "raise",
                 checkpoint_dir: str | os.PathLike[str] | None = None) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode={mode!r} is invalid; expected 'min' or 'max'")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window={window!r} is invalid; expected an int >= 1")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"warmup={warmup!r} is invalid; expected an int >= 0")
        if on_spike not in ON_SPIKE:
            raise ValueError(f"on_spike={on_spike!r} is invalid; expected one of {ON_SPIKE}")
        if on_spike == "rollback" and checkpoint_dir is None:
            raise ValueError("on_spike='rollback' needs checkpoint_dir=, the directory `save` writes the "
                             "checkpoints to roll back to")
        self.mode = mode
        self.window = window
        self.warmup = warmup
        self.atol = atol
        self.rtol = rtol
        self.exclude_batches_path = exclude_batches_path
        self.finite_only = finite_only
        self.on_spike = on_spike
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.bad_batches: list[int] = []
        self.skipped: list[dict[str, Any]] = []
        """What rollbacks left out: per batch its epoch, positions `[first, stop)` in the epoch's order over all
        ranks, dataset indices (`samples`), `batch_idx`, the batch that spiked, the ranks that spiked, the
        checkpoint restored."""
        self.rolled_back = False
        """True right after the call that rolled back: the loop must leave its pass over the loader."""
        self.last_val: Tensor | None = None
        self._values: deque[Tensor] = deque(maxlen=window)
        self._batches: deque[tuple[int, int, int, int]] = deque(maxlen=2)  # (epoch, first, stop, batch_idx)

    @torch.no_grad()
    def on_train_batch_end(self, fabric: Fabric, loss: Tensor | float, batch: Any, batch_idx: int,
                           state: dict[str, Any] | None = None) -> None:
        """Check this step's loss (call it on every rank, after the optimizer step). `state` (the dict given to
        `save`, holding the dataloader from `setup_dataloaders`) is needed in rollback mode."""
        self.rolled_back = False
        loader = _loader_in(state) if self.on_spike == "rollback" else None
        spiked = self.detect(fabric, loss, batch_idx, loader)
        if not spiked:
            return
        if loader is None or state is None:
            raise TrainingSpikeException(batch_idx)
        self._roll_back(fabric, state, loader, batch_idx, spiked)

    @torch.no_grad()
    def detect(self, fabric: Fabric, loss: Tensor | float, batch_idx: int,
               loader: FabricDataLoader | None = None) -> list[int]:
        """Judge this step's loss on every rank together and return the ranks that spiked (the same list on every
        rank; empty: no spike). On a spike the two offending batch indices go to `exclude_batches_path`; with
        `loader` (the training loader), the positions of its last batch are remembered for `skip_offending`."""
        losses = self._gather(fabric, loss)
        if loader is not None:
            epoch, first, stop = loader.last_batch()
            self._batches.append((epoch, first, stop, batch_idx))
        spiked = self._spiking_ranks(losses) if batch_idx >= self.warmup else []
        if not spiked:
            if self.finite_only or bool(torch.isfinite(losses).all()):
                self._values.append(losses)
                self.last_val = losses
            return spiked
        self.bad_batches.extend([batch_idx - 1, batch_idx])
        if fabric.is_global_zero:
            _write_json(self._exclude_file(), self.bad_batches)
        return spiked

    def offending_start(self, batch_idx: int) -> tuple[int, int]:
        """`(epoch, position)` where the offending batches of the spike at `batch_idx` (it and the one before it,
        as `detect` saw them) begin: a checkpoint to roll back to must be saved at or before it."""
        epoch, first = [entry for entry in self._batches if entry[3] >= batch_idx - 1][0][:2]
        return epoch, first

    def skip_offending(self, loader: FabricDataLoader, batch_idx: int, ranks: list[int], checkpoint: str) -> None:
        """Record the offending batches of the spike at `batch_idx` (seen by `ranks`) as skipped, with their
        samples, after a rollback to `checkpoint`; the next `apply_skips` leaves them out of `loader`."""
        for batch_epoch, batch_first, batch_stop, index in [entry for entry in self._batches
                                                             if entry[3] >= batch_idx - 1]:
            self.skipped.append({"epoch": batch_epoch, "first": batch_first, "stop": batch_stop, "batch_idx": index,
                                 "samples": loader.indices(batch_epoch, batch_first, batch_stop),
                                 "spike_batch_idx": batch_idx, "ranks": ranks, "checkpoint": checkpoint})
        self._batches.clear()

    def apply_skips(self, loader: FabricDataLoader, record_dir: Path) -> None:
        """Leave every sample skipped so far out of `loader`: those this detector knows and those listed in
        `record_dir/skipped_samples.json` (a rollback after the checkpoint a resumed run loaded)."""
        record = record_dir / RECORD_NAME
        if record.is_file():
            self.skipped += [entry for entry in json.loads(record.read_text()) if entry not in self.skipped]
        for entry in self.skipped:
            loader.exclude(entry["epoch"], entry["first"], entry["stop"])
        self._batches.clear()

    def save(self, fabric: Fabric, state: dict[str, Any]) -> Path:
        """Save `state` (with the detector's statistics) to `checkpoint_dir`, named by the loader's position
        (`epoch=E-samples=S.ckpt`), as a checkpoint a rollback can restore; every rank calls it. Returns the path."""
        if self.checkpoint_dir is None:
            raise ValueError("SpikeDetection.save needs checkpoint_dir=, the directory to save to")
        if STATE_KEY in state:
            raise ValueError(f"the state has an entry {STATE_KEY!r}, which SpikeDetection.save keeps its own "
                             "statistics in; rename that entry")
        position = _loader_in(state).state_dict()
        path = self.checkpoint_dir / f"epoch={position['epoch']}-samples={position['samples']}.ckpt"
        if fabric.is_global_zero:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        fabric.barrier()
        fabric.save(str(path), {**state, STATE_KEY: self})
        return path

    def load(self, fabric: Fabric, state: dict[str, Any], path: str | os.PathLike[str] | None = None) -> Path:
        """Resume a run: restore `state` and the detector's statistics from `path` (default: the checkpoint
        `save` wrote at the furthest position in `checkpoint_dir`), then leave out every sample that
        `skipped_samples.json` lists, also those a rollback skipped after that checkpoint was written. Every rank
        calls it; returns the path loaded."""
        if self.checkpoint_dir is None:
            raise ValueError("SpikeDetection.load needs checkpoint_dir=, the directory `save` wrote to")
        if path is None:
            positions = _positions(self.checkpoint_dir)
            if not positions:
                raise FileNotFoundError(f"no checkpoint written by SpikeDetection.save in "
                                        f"{str(self.checkpoint_dir)!r} (names epoch=E-samples=S.ckpt)")
            path = self.checkpoint_dir / max(positions, key=positions.__getitem__)
        self._restore(fabric, state, Path(path))
        return Path(path)

    def state_dict(self) -> dict[str, Any]:
        """The running statistics and what was excluded so far."""
        return {"last_val": None if self.last_val is None else self.last_val.tolist(),
                "values": [value.tolist() for value in self._values], "bad_batches": list(self.bad_batches),
                "skipped": [dict(record) for record in self.skipped]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the statistics. The exclusions are merged with those known (never forgotten): a resumed run
        learns those of its checkpoint, a rollback to an older checkpoint keeps those made since."""
        last = state_dict["last_val"]
        self.last_val = None if last is None else torch.tensor(last)
        self._values = deque((torch.tensor(value) for value in state_dict["values"]), maxlen=self.window)
        self.bad_batches += [index for index in state_dict["bad_batches"] if index not in self.bad_batches]
        self.skipped += [record for record in state_dict["skipped"] if record not in self.skipped]

    # -- deciding -------------------------------------------------------------------------------------------------
    def _gather(self, fabric: Fabric, loss: Tensor | float) -> Tensor:
        value = torch.as_tensor(loss).detach()
        if value.numel() != 1:
            raise ValueError(f"SpikeDetection takes one loss value per rank; got a tensor of shape "
                             f"{tuple(value.shape)}")
        gathered: Tensor = fabric.all_gather(value.reshape(()).float().to(fabric.device)).reshape(-1).cpu()
        if self.last_val is not None and self.last_val.shape != gathered.shape:  # resumed on another rank count
            self.last_val, self._values = None, deque(maxlen=self.window)
        return gathered

    def _spiking_ranks(self, losses: Tensor) -> list[int]:
        """The ranks whose loss is a spike, the same list on every rank."""
        finite = torch.isfinite(losses)
        spike = ~finite if self.finite_only else torch.zeros_like(finite)
        if self._values and self.last_val is not None:
            mean = torch.stack(list(self._values)).mean(0)
            diff = losses - self.last_val
            better = diff <= 0 if self.mode == "min" else diff >= 0
            far = torch.ones_like(finite)
            if self.atol is not None:
                far &= (losses - mean).abs() >= abs(self.atol)
            if self.rtol is not None:
                far &= (losses - mean).abs() >= (self.rtol * mean).abs()
            spike |= ~better & far  # a NaN compares false: far only without atol and rtol, as in Lightning
        return [int(rank) for rank in spike.nonzero().reshape(-1)]

    def _exclude_file(self) -> Path:
        path = Path(os.getcwd() if self.exclude_batches_path is None else self.exclude_batches_path)
        return path if path.suffix == ".json" else path / "skip_batches.json"

    # -- rolling back ---------------------------------------------------------------------------------------------
    def _roll_back(self, fabric: Fabric, state: dict[str, Any], loader: FabricDataLoader, batch_idx: int,
                   ranks: list[int]) -> None:
        """Restore the newest checkpoint from before the offending batches, leave their samples out, record it."""
        assert self.checkpoint_dir is not None  # checked in __init__ for rollback mode
        epoch, first = self.offending_start(batch_idx)
        target = fabric.broadcast(_checkpoint_before(self.checkpoint_dir, epoch, first) if fabric.is_global_zero
                                  else None)
        if target is None:
            raise TrainingSpikeException(batch_idx, f"and no checkpoint in {str(self.checkpoint_dir)!r} was saved "
                                                    f"before epoch {epoch}, position {first} to roll back to")
        self.skip_offending(loader, batch_idx, ranks, target)
        if fabric.is_global_zero:
            _discard_newer(self.checkpoint_dir, target)
        self._restore(fabric, state, self.checkpoint_dir / target)
        self.write_record(fabric, self.checkpoint_dir)
        self.rolled_back = True

    def write_record(self, fabric: Fabric, record_dir: Path) -> None:
        """Write what was skipped so far to `record_dir/skipped_samples.json` (rank 0; every rank calls it and
        waits for the file)."""
        if fabric.is_global_zero:
            _write_json(record_dir / RECORD_NAME, self.skipped)
        fabric.barrier()

    def _restore(self, fabric: Fabric, state: dict[str, Any], path: Path) -> None:
        """Load `path` into `state` and the detector, then leave out every sample known to be skipped."""
        assert self.checkpoint_dir is not None  # checked by the callers
        merged = {**state, STATE_KEY: self}
        fabric.load(str(path), merged)
        state.update({key: merged[key] for key in state})
        self.apply_skips(_loader_in(state), self.checkpoint_dir)


def _loader_in(state: dict[str, Any] | None) -> FabricDataLoader:
    """The one dataloader from `setup_dataloaders` in `state`, whose position checkpoints and exclusions use."""
    loaders = [value for value in (state or {}).values() if isinstance(value, FabricDataLoader)]
    if len(loaders) != 1:
        raise ValueError(f"SpikeDetection(on_spike='rollback') needs state= holding exactly one dataloader from "
                         f"`fabric.setup_dataloaders` (the training loader); found {len(loaders)}")
    return loaders[0]


def _positions(directory: Path) -> dict[str, tuple[int, int]]:
    """The rollback checkpoints in `directory` by name, with their (epoch, position)."""
    if not directory.is_dir():
        return {}
    found = {path.name: _CHECKPOINT_NAME.match(path.name) for path in directory.iterdir()}
    return {name: (int(match[1]), int(match[2])) for name, match in found.items() if match}


def _checkpoint_before(directory: Path, epoch: int, first: int) -> str | None:
    """The name of the checkpoint saved last at or before position `first` of epoch `epoch`, or None."""
    earlier = {name: at for name, at in _positions(directory).items() if at <= (epoch, first)}
    return max(earlier, key=earlier.__getitem__) if earlier else None


def _discard_newer(directory: Path, target: str) -> None:
    """Remove the checkpoints past `target`: they belong to the history the rollback abandons."""
    positions = _positions(directory)
    for name, at in positions.items():
        if at > positions[target]:
            path = directory / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _write_json(path: Path, value: Any) -> None:
    """Write atomically: other ranks may be reading the previous version."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps(value, indent=4))
    os.replace(staging, path)


__all__ = ["ON_SPIKE", "SpikeDetection", "TrainingSpikeException"]
