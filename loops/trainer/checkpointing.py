"""What a Trainer checkpoint holds (Lightning's layout: epoch, global_step, state_dict, loops, callbacks,
optimizer_states, lr_schedulers, hyper_parameters, datamodule state) and how `ckpt_path` restores it. Files are
written and read through `fabric.save` / `fabric.load` (atomic, checksummed, RNG states included)."""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable

from fabric_kit.checkpoint import read_checkpoint
from loops.core.hparams import storable_hparams

FORMAT_VERSION = 1


def dump_checkpoint(trainer: Any, weights_only: bool = False) -> dict[str, Any]:
    module = trainer.lightning_module
    checkpoint: dict[str, Any] = {
        "epoch": trainer.current_epoch,
        "global_step": trainer.global_step,
        "loops_format_version": FORMAT_VERSION,
        "state_dict": module.state_dict(),
        "loops": {"fit_loop": trainer.fit_loop.state_dict()},
    }
    if not weights_only:
        checkpoint["callbacks"] = {cb.state_key: cb.state_dict() for cb in trainer.callbacks if cb.state_dict()}
        checkpoint["optimizer_states"] = [opt.state_dict() for opt in trainer.optimizers]
        checkpoint["optimizer_count"] = len(trainer.optimizers)
        checkpoint["lr_schedulers"] = [config.scheduler.state_dict() for config in trainer.lr_scheduler_configs]
    if module.hparams:
        checkpoint["hparams_name"] = "kwargs"
        checkpoint["hyper_parameters"] = storable_hparams(module.hparams, type(module).__name__)
    datamodule = trainer.datamodule
    if datamodule is not None:
        if datamodule.hparams:
            checkpoint["datamodule_hyper_parameters"] = storable_hparams(datamodule.hparams,
                                                                         type(datamodule).__name__)
        state = datamodule.state_dict()
        if state:
            checkpoint[type(datamodule).__qualname__] = state
    if not weights_only:
        for callback in trainer.callbacks:
            callback.on_save_checkpoint(trainer, module, checkpoint)
    module.on_save_checkpoint(checkpoint)
    return checkpoint


def optimizer_key(index: int) -> str:
    """Each optimizer is its own checkpoint entry (not a list): fabric saves and restores it in place, so a
    sharding strategy handles its sharded state."""
    return f"optimizer_states.{index}"


def resolve_ckpt_path(trainer: Any, ckpt_path: str | Path | None, stage: str) -> str | None:
    """None, a file, "best" (the best checkpoint of the run's checkpoint callback) or "last": the newest
    `last*.ckpt` in a checkpoint callback's directory, also one an earlier (killed) process wrote — none yet is a
    warning and a fresh start, so a script can always pass it."""
    if ckpt_path is None:
        return None
    if ckpt_path in ("best", "last"):
        callbacks = trainer.checkpoint_callbacks
        if not callbacks:
            raise ValueError(f'ckpt_path="{ckpt_path}" needs a checkpoint callback (e.g. ModelCheckpoint) in '
                             "Trainer(callbacks=[...]); pass a checkpoint file path instead")
        if ckpt_path == "last":
            return _newest_last_checkpoint(trainer, callbacks, stage)
        found = [cb.best_model_path for cb in callbacks if getattr(cb, "best_model_path", "")]
        best = str(found[0]) if found else _best_recorded_on_disk(trainer, callbacks)
        if best is None:
            raise ValueError('ckpt_path="best": no checkpoint callback has written a best checkpoint yet '
                             "(best_model_path is empty, and no checkpoint in its dirpath records one); run fit "
                             "first or pass a file path")
        return best
    path = Path(ckpt_path)
    if not path.exists():  # a file, or the directory a sharding strategy writes
        raise FileNotFoundError(f"ckpt_path={str(ckpt_path)!r} does not exist; accepted: None, 'last', 'best' or "
                                "the path of a checkpoint")
    return str(path)


def _newest_last_checkpoint(trainer: Any, callbacks: list[Any], stage: str) -> str | None:
    candidates = {cb.last_model_path for cb in callbacks if getattr(cb, "last_model_path", "")}
    for callback in callbacks:
        name = getattr(callback, "CHECKPOINT_NAME_LAST", None)
        if name:
            pattern = re.compile(rf"{re.escape(name)}(-v?\d+)?\.ckpt")
            candidates |= set(_files_in_dirpath(callback, pattern.fullmatch))
    existing = [path for path in candidates if os.path.exists(path)]
    newest = max(existing, key=os.path.getmtime) if existing else None
    if trainer.world_size > 1:
        newest = trainer.strategy.broadcast(newest)
    if newest is None:
        warnings.warn(f'{stage}(ckpt_path="last"): no last checkpoint exists yet, so nothing is loaded (write one '
                      "with ModelCheckpoint(save_last=True))", stacklevel=4)
    return newest


def _best_recorded_on_disk(trainer: Any, callbacks: list[Any]) -> str | None:
    """In a new process (e.g. `test --ckpt_path best` after a separate `fit`), the best checkpoint is the one the
    newest checkpoint in the callback's `dirpath` records in its saved callback state."""
    best = None
    if trainer.is_global_zero:
        for callback in callbacks:
            files = _files_in_dirpath(callback, lambda name: name.endswith(".ckpt"))
            if not files:
                continue
            state = read_checkpoint(max(files, key=os.path.getmtime)).get("callbacks", {}).get(callback.state_key, {})
            path = state.get("best_model_path") if isinstance(state, dict) else None
            if path and os.path.exists(path):
                best = str(path)
                break
    return trainer.strategy.broadcast(best) if trainer.world_size > 1 else best


def _files_in_dirpath(callback: Any, wanted: Callable[[str], Any]) -> list[str]:
    """Paths of the files in a checkpoint callback's `dirpath` whose names `wanted` accepts (none without one)."""
    directory = getattr(callback, "dirpath", None)
    if not directory or not os.path.isdir(directory):
        return []
    return [os.path.join(directory, name) for name in os.listdir(directory) if wanted(name)]


def restore_model(trainer: Any, path: str, stage: str) -> dict[str, Any]:
    """Load the weights (and this rank's RNG state) into the module and the datamodule's state; when fitting,
    give callbacks their state and run their `on_load_checkpoint`. Returns the rest of the checkpoint."""
    module = trainer.lightning_module
    state: dict[str, Any] = {"state_dict": module}
    if stage == "fit":  # restored in place by fabric, so a sharding strategy gives each rank its shard
        state.update({optimizer_key(i): opt for i, opt in enumerate(trainer._fabric_optimizers)})
    try:
        checkpoint = trainer.fabric.load(path, state)
    except KeyError as missing:
        if stage != "fit" or optimizer_key(0) not in str(missing):
            raise
        raise KeyError(f"checkpoint {path!r} holds only the model (saved with weights_only=True); fit cannot resume "
                       "the optimizers from it. Load the weights with Model.load_from_checkpoint and start fit "
                       "without ckpt_path") from missing
    checkpoint["state_dict"] = module.state_dict()
    datamodule = trainer.datamodule
    if datamodule is not None and type(datamodule).__qualname__ in checkpoint:
        datamodule.load_state_dict(checkpoint[type(datamodule).__qualname__])
    if stage == "fit":  # evaluating a checkpoint must not rewind the callbacks of the run that wrote it
        states = checkpoint.get("callbacks", {})
        for callback in trainer.callbacks:
            if callback.state_key in states:
                callback.load_state_dict(states[callback.state_key])
            callback.on_load_checkpoint(trainer, module, checkpoint)
    module.on_load_checkpoint(checkpoint)
    return checkpoint


def restore_training_state(trainer: Any, checkpoint: dict[str, Any], path: str) -> None:
    """Optimizers, schedulers and loop progress, so `fit(ckpt_path=...)` continues where the run stopped."""
    if "lr_schedulers" not in checkpoint:
        raise KeyError(f"checkpoint {path!r} holds only the model (saved with weights_only=True); fit cannot resume "
                       "the optimizers from it. Load the weights with Model.load_from_checkpoint and start fit "
                       "without ckpt_path")
    saved = checkpoint.get("optimizer_count", len(trainer.optimizers))
    if saved != len(trainer.optimizers):
        raise ValueError(f"checkpoint {path!r} has {saved} optimizer states but configure_optimizers returned "
                         f"{len(trainer.optimizers)} optimizers")
    for config, state in zip(trainer.lr_scheduler_configs, checkpoint.get("lr_schedulers", [])):
        config.scheduler.load_state_dict(state)
    loop_state = checkpoint.get("loops", {}).get("fit_loop")
    if loop_state is not None:
        trainer.fit_loop.load_state_dict(loop_state)
    # The loop ends every epoch's pass on the loader (set_epoch), so the saved position agrees with the loop's.
    trainer.fit_loop.loader_state = checkpoint.get("train_dataloader")
