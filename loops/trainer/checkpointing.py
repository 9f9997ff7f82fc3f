"""What a Trainer checkpoint holds and how `ckpt_path` restores it. The layout is Lightning 2.x's (epoch,
global_step, pytorch-lightning_version, state_dict, loops, callbacks, optimizer_states, lr_schedulers,
hyper_parameters, datamodule state), so Lightning loads and resumes loops' files and loops resumes Lightning's.
loops adds the training loader's position and, through `fabric.save` / `fabric.load` (atomic, verified), every
rank's RNG states: what makes its own resume bit-exact."""
from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fabric_kit import Fabric, is_wrapped
from fabric_kit.checkpoint import read_checkpoint
from fabric_kit.strategies import DDPStrategy, SingleDeviceStrategy
from loops.core.hparams import storable_hparams

if TYPE_CHECKING:
    from loops.callbacks.checkpoint import Checkpoint
    from loops.trainer.trainer import Trainer

FORMAT_VERSION = 2
"""loops' own checkpoint layout; 2: the fit loop's position and (without a sharding strategy) the optimizer states
as Lightning lays them out."""

LIGHTNING_VERSION = "2.0.0"
"""Written as `pytorch-lightning_version`, which Lightning requires: its checkpoint layout has not changed since
2.0, so any Lightning 2.x reads the file as its own, without migrating it."""


def dump_checkpoint(trainer: Trainer, weights_only: bool = False) -> dict[str, Any]:
    hooks = trainer.run_state.hooks
    module = hooks.pl_module
    checkpoint: dict[str, Any] = {
        "epoch": trainer.current_epoch,
        "global_step": trainer.global_step,
        "pytorch-lightning_version": LIGHTNING_VERSION,
        "loops_format_version": FORMAT_VERSION,
        "state_dict": module.state_dict(),
        "loops": {"fit_loop": trainer.fit_loop.state_dict()},
    }
    if not weights_only:
        states = {cb.state_key: hooks.call_on(cb, "state_dict") for cb in trainer.callbacks}
        checkpoint["callbacks"] = {key: state for key, state in states.items() if state}
        checkpoint["optimizer_states"] = [opt.state_dict() for opt in trainer.optimizers]
        checkpoint["lr_schedulers"] = [config.scheduler.state_dict() for config in trainer.lr_scheduler_configs]
    if module.hparams:
        checkpoint[module.CHECKPOINT_HYPER_PARAMS_NAME] = module._hparams_name
        checkpoint[module.CHECKPOINT_HYPER_PARAMS_KEY] = storable_hparams(module.hparams, type(module).__name__)
    datamodule = trainer.datamodule
    if datamodule is not None:
        if datamodule.hparams:
            checkpoint[datamodule.CHECKPOINT_HYPER_PARAMS_NAME] = datamodule._hparams_name
            checkpoint[datamodule.CHECKPOINT_HYPER_PARAMS_KEY] = storable_hparams(datamodule.hparams,
                                                                                  type(datamodule).__name__)
        state = hooks.call_on(datamodule, "state_dict")
        if state:
            checkpoint[type(datamodule).__qualname__] = state
    if not weights_only:
        for callback in trainer.callbacks:
            hooks.call_on(callback, "on_save_checkpoint", trainer, module, checkpoint)
    hooks.call_on(module, "on_save_checkpoint", checkpoint)
    return checkpoint


def strategy_keeps_optimizers(fabric: Fabric) -> bool:
    """Whether fabric's strategy saves and loads optimizers its own way: then each optimizer is a checkpoint entry of
    its own (`optimizer_key`), handed to fabric as the object (FSDP and DeepSpeed gather or shard its state, XLA
    copies it off the device; a subclass may change how). Only under SingleDeviceStrategy and DDPStrategy itself is
    an optimizer's `state_dict()` known to be its whole state: the file then holds their list under
    `optimizer_states`, as Lightning does."""
    return type(fabric.strategy) not in (SingleDeviceStrategy, DDPStrategy)


def hand_optimizers_to_strategy(state: dict[str, Any], trainer: Trainer) -> None:
    """Replace the `optimizer_states` list of `state` by one entry per optimizer object (and their count)."""
    optimizers = _fabric_optimizers(trainer)
    del state["optimizer_states"]
    state.update({optimizer_key(i): opt for i, opt in enumerate(optimizers)})
    state["optimizer_count"] = len(optimizers)


def optimizer_key(index: int) -> str:
    return f"optimizer_states.{index}"


def _fabric_optimizers(trainer: Trainer) -> list[Any]:
    """The optimizers as fabric set them up, which a strategy saves and restores its own way."""
    return [optimizer.fabric_optimizer for optimizer in trainer.run_state.optimizers]


def resolve_ckpt_path(trainer: Trainer, ckpt_path: str | Path | None, stage: str) -> str | None:
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


def _newest_last_checkpoint(trainer: Trainer, callbacks: list[Checkpoint], stage: str) -> str | None:
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


def _best_recorded_on_disk(trainer: Trainer, callbacks: list[Checkpoint]) -> str | None:
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


def _files_in_dirpath(callback: Checkpoint, wanted: Callable[[str], Any]) -> list[str]:
    """Paths of the files in a checkpoint callback's `dirpath` whose names `wanted` accepts (none without one)."""
    directory = getattr(callback, "dirpath", None)
    if not directory or not os.path.isdir(directory):
        return []
    return [os.path.join(directory, name) for name in os.listdir(directory) if wanted(name)]


def save(trainer: Trainer, path: str, weights_only: bool) -> None:
    """`trainer.save_checkpoint`: the checkpoint's entries with the module itself, not its state dict, and so the
    optimizers where the strategy saves them its own way (a sharding strategy gathers, or shards, them)."""
    state = dump_checkpoint(trainer, weights_only)
    if "current_model_state" not in state:  # else a weight-averaging callback put the average there
        state["state_dict"] = trainer.lightning_module
    if "optimizer_states" in state and strategy_keeps_optimizers(trainer.fabric):
        hand_optimizers_to_strategy(state, trainer)
    loader = trainer.fit_loop.train_loader
    if not weights_only and is_wrapped(loader):  # fabric saves its position: resume continues the shuffle
        state["train_dataloader"] = loader
    trainer.fabric.save(path, state)


def restore_model(trainer: Trainer, path: str, stage: str) -> dict[str, Any]:
    """Load the weights (and this rank's RNG state) into the module and the datamodule's state; when fitting,
    also the optimizers, give callbacks their state and run their `on_load_checkpoint`. Returns the rest of the
    checkpoint. The module's `strict_loading` decides whether its keys must match; the stage call's `weights_only`
    (None: torch's safe default, True) whether the file may unpickle arbitrary objects."""
    hooks = trainer.run_state.hooks
    module = hooks.pl_module
    optimizers = _fabric_optimizers(trainer) if stage == "fit" else []
    by_strategy = bool(optimizers) and strategy_keeps_optimizers(trainer.fabric)
    state: dict[str, Any] = {"state_dict": module}
    if by_strategy:  # restored in place by fabric, so a sharding strategy gives each rank its shard
        state.update({optimizer_key(i): opt for i, opt in enumerate(optimizers)})
    try:
        checkpoint = trainer.fabric.load(path, state, strict=module.strict_loading,
                                         weights_only=trainer.run_state.weights_only is not False)
    except KeyError as missing:
        if not by_strategy or optimizer_key(0) not in str(missing):
            raise
        raise KeyError(f"checkpoint {path!r} has no optimizer entries that {type(trainer.fabric.strategy).__name__} "
                       "can restore: it was saved with weights_only=True, or holds the optimizer states as one list "
                       "(a checkpoint of Lightning, or of loops on one device or under DDP), which only a strategy "
                       f"that does not shard them reads ({missing})") from missing
    checkpoint["state_dict"] = module.state_dict()
    version = checkpoint.get("loops_format_version")
    if stage == "fit" and version not in (None, FORMAT_VERSION):  # None: not written by loops (e.g. by Lightning)
        raise ValueError(f"checkpoint {path!r} has loops' checkpoint format {version}; fit resumes format "
                         f"{FORMAT_VERSION} only (validate, test and load_from_checkpoint still read its weights)")
    if optimizers:
        saved = checkpoint.get("optimizer_count") if by_strategy else _restore_optimizer_list(trainer, checkpoint,
                                                                                              path)
        if saved != len(optimizers):
            raise ValueError(f"checkpoint {path!r} has {saved} optimizer states but configure_optimizers returned "
                             f"{len(optimizers)} optimizers")
    datamodule = trainer.datamodule
    if datamodule is not None and type(datamodule).__qualname__ in checkpoint:
        hooks.call_on(datamodule, "load_state_dict", checkpoint[type(datamodule).__qualname__])
    if stage == "fit":  # evaluating a checkpoint must not rewind the callbacks of the run that wrote it
        states = checkpoint.get("callbacks", {})
        for callback in trainer.callbacks:
            if callback.state_key in states:
                hooks.call_on(callback, "load_state_dict", states[callback.state_key])
            hooks.call_on(callback, "on_load_checkpoint", trainer, module, checkpoint)
    hooks.call_on(module, "on_load_checkpoint", checkpoint)
    return checkpoint


def _restore_optimizer_list(trainer: Trainer, checkpoint: dict[str, Any], path: str) -> int:
    """Load the `optimizer_states` list (or the entries a sharding strategy wrote into one file: full state) into
    the optimizers; returns how many the checkpoint holds."""
    states = checkpoint.get("optimizer_states")
    if states is None and "optimizer_count" in checkpoint:
        states = [checkpoint[optimizer_key(i)] for i in range(checkpoint["optimizer_count"])]
    if states is None:
        raise KeyError(f"checkpoint {path!r} holds only the model (saved with weights_only=True, e.g. by "
                       "ModelCheckpoint(save_weights_only=True)); fit cannot resume the optimizers from it. Load "
                       "the weights with Model.load_from_checkpoint and start fit without ckpt_path")
    if len(states) == len(trainer.optimizers):
        for optimizer, state in zip(trainer.optimizers, states, strict=False):
            optimizer.load_state_dict(state)
    return len(states)


def restore_training_state(trainer: Trainer, checkpoint: dict[str, Any], path: str) -> None:
    """Schedulers and loop progress, so `fit(ckpt_path=...)` continues where the run stopped. A checkpoint of
    Lightning's resumes at its epoch, batch and step; without the loader's position loops keeps, a mid-epoch one
    skips the trained batches of the epoch as the loader yields them now (a warning says so)."""
    if "lr_schedulers" not in checkpoint:
        raise KeyError(f"checkpoint {path!r} has no scheduler states (saved with weights_only=True); fit cannot "
                       "resume from it. Load the weights with Model.load_from_checkpoint and start fit without "
                       "ckpt_path")
    for config, state in zip(trainer.lr_scheduler_configs, checkpoint["lr_schedulers"], strict=False):
        config.scheduler.load_state_dict(state)
    fit_loop = trainer.fit_loop
    loop_state = checkpoint.get("loops", {}).get("fit_loop")
    if loop_state is not None:
        fit_loop.load_state_dict(loop_state)
    max_epochs = trainer.max_epochs
    if max_epochs is not None and max_epochs != -1 and trainer.current_epoch > max_epochs:
        raise ValueError(f"checkpoint {path!r} was saved at current_epoch={trainer.current_epoch}, past "
                         f"Trainer(max_epochs={max_epochs}) (Lightning refuses it too); to continue it, pass "
                         f"max_epochs={trainer.current_epoch} or more (or set trainer.fit_loop.max_epochs)")
    # The loop ends every epoch's pass on the loader (set_epoch), so the saved position agrees with the loop's.
    fit_loop.loader_state = checkpoint.get("train_dataloader")
    skip = trainer.run_state.progress.resume_skip
    if skip and fit_loop.loader_state is None and "loops_format_version" not in checkpoint:
        warnings.warn(f"checkpoint {path!r} (not written by loops) was saved after batch {skip} of "
                      f"epoch {trainer.current_epoch} and holds no position of the training loader (Lightning keeps "
                      "none for a plain DataLoader): fit skips the epoch's first "
                      f"{skip} batches as the loader yields them now, which are the batches the run "
                      "trained on only if the loader does not shuffle. Lightning itself would replay the epoch's "
                      "first batches instead; resume from an end-of-epoch checkpoint to avoid both", stacklevel=2)
