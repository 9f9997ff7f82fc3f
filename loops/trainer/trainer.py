"""The Trainer: Lightning's Trainer arguments and state on top of a fabric_kit Fabric. It owns the run's stages
(fit, validate, test, predict) and delegates devices, processes, precision and checkpoint files to fabric."""
from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import Tensor

from fabric_kit import Fabric
from fabric_kit.accelerators import Accelerator
from fabric_kit.environments import SLURMEnvironment, requeue_job
from fabric_kit.loggers import FolderLogger, Logger, agree_on_versions
from fabric_kit.strategies import Strategy
from fabric_kit.wrappers import FabricModule, split_compiled
from loops.callbacks.callback import Callback
from loops.callbacks.checkpoint import Checkpoint
from loops.callbacks.timer import Timer
from loops.core.datamodule import LightningDataModule
from loops.core.hooks import DataHooks
from loops.core.module import LightningModule
from loops.core.optimizer_config import parse_optimizers
from loops.loggers.defaults import default_loggers, log_stage_start
from loops.logging.hook_rules import NO_LOGGING
from loops.profilers import Profiler, build_profiler
from loops.trainer import arguments as args_check
from loops.trainer import checkpointing
from loops.trainer.data import as_list, eval_loaders, find_loaders
from loops.trainer.evaluation_loop import print_results, run_evaluation
from loops.trainer.fit_loop import FitLoop
from loops.trainer.hooks import HookTable, overrides
from loops.trainer.oom import check_on_oom
from loops.trainer.optimization import LoopOptimizer, check_automatic_optimizers, manual_backward
from loops.trainer.predict_loop import run_prediction
from loops.trainer.properties import TrainerProperties
from loops.trainer.router import StepRouter
from loops.trainer.run_state import RunState
from loops.trainer.states import TrainerFn, TrainerStatus
from loops.tuner.exit import TunerExit

_TRANSFER_HOOKS = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")
PREEMPTED_EXIT_STATUS = 128 + int(signal.SIGTERM)
"""How every process of a preempted fit ends (`SystemExit`), whichever signal preempted it: as SIGTERM ends a
process."""


class Trainer(TrainerProperties):
    """Runs a LightningModule's loops: `fit`, `validate`, `test`, `predict`. Arguments follow Lightning 2.x."""

    def __init__(self, *, accelerator: str | Accelerator = "auto", strategy: str | Strategy = "auto",
                 devices: int | str | list[int] = "auto", num_nodes: int = 1, precision: str | int | None = None,
                 logger: Logger | Iterable[Logger] | bool | None = None,
                 callbacks: list[Callback] | Callback | None = None, fast_dev_run: int | bool = False,
                 max_epochs: int | None = None, min_epochs: int | None = None, max_steps: int = -1,
                 min_steps: int | None = None, max_time: str | timedelta | dict[str, int] | None = None,
                 limit_train_batches: int | float | None = None, limit_val_batches: int | float | None = None,
                 limit_test_batches: int | float | None = None, limit_predict_batches: int | float | None = None,
                 overfit_batches: int | float = 0.0,
                 val_check_interval: int | float | str | timedelta | dict[str, int] | None = None,
                 check_val_every_n_epoch: int | None = 1, num_sanity_val_steps: int | None = None,
                 log_every_n_steps: int | None = None, enable_checkpointing: bool | None = None,
                 enable_progress_bar: bool | None = None, enable_model_summary: bool | None = None,
                 accumulate_grad_batches: int = 1, gradient_clip_val: int | float | None = None,
                 gradient_clip_algorithm: str | None = None, deterministic: bool | str | None = None,
                 benchmark: bool | None = None, inference_mode: bool = True, use_distributed_sampler: bool = True,
                 profiler: Profiler | str | None = None, detect_anomaly: bool = False, barebones: bool = False,
                 plugins: Any = None, sync_batchnorm: bool = False, reload_dataloaders_every_n_epochs: int = 0,
                 default_root_dir: str | Path | None = None,
                 accumulate_num_items: Callable[[Any], int | Tensor] | None = None, on_oom: str = "raise") -> None:
        self.profiler = build_profiler(profiler)
        self.fabric = Fabric(accelerator=accelerator, strategy=strategy, devices=devices, num_nodes=num_nodes,
                             precision=precision, plugins=plugins)
        fast = args_check.fast_dev_run_batches(fast_dev_run)
        if barebones and (fast or logger or enable_checkpointing or enable_progress_bar or enable_model_summary
                          or profiler is not None):
            raise ValueError("barebones=True turns off logging, checkpointing, the progress bar, the model summary, "
                             "profiling and fast_dev_run; remove logger / enable_* / profiler / fast_dev_run or set "
                             "barebones=False")
        self.barebones, self.fast_dev_run = barebones, fast_dev_run
        self.default_root_dir = str(default_root_dir) if default_root_dir is not None else os.getcwd()
        self.run_state = RunState()
        self.fit_loop = FitLoop(self)
        self._set_optimization(accumulate_grad_batches, accumulate_num_items, gradient_clip_val,
                               gradient_clip_algorithm, detect_anomaly, sync_batchnorm)
        self.on_oom = check_on_oom(on_oom)
        self.oom_splits = 1  # micro-batches each training batch runs as (raised by on_oom="reduce", oom.py)
        self._set_run_length(max_epochs, min_epochs, max_steps, min_steps, max_time, fast)
        self._set_batches(limit_train_batches, limit_val_batches, limit_test_batches, limit_predict_batches,
                          overfit_batches, val_check_interval, check_val_every_n_epoch, num_sanity_val_steps, fast)
        self.inference_mode, self.use_distributed_sampler = inference_mode, use_distributed_sampler
        self.reload_dataloaders_every_n_epochs = reload_dataloaders_every_n_epochs
        self._set_loggers(logger, log_every_n_steps, fast)
        self._set_callbacks(callbacks, enable_checkpointing, enable_progress_bar, enable_model_summary)
        args_check.set_torch_flags(deterministic, benchmark)
        self.lightning_module: LightningModule | None = None
        self.datamodule: LightningDataModule | None = None
        self.num_test_batches: list[int | float] = []
        self.num_predict_batches: list[int | float] = []
        self._ran_here = False

    def _set_optimization(self, accumulate_grad_batches: int,
                          accumulate_num_items: Callable[[Any], int | Tensor] | None,
                          gradient_clip_val: int | float | None, gradient_clip_algorithm: str | None,
                          detect_anomaly: bool, sync_batchnorm: bool) -> None:
        """`accumulate_num_items(batch) -> int` (a fabric_kit extension): weigh each batch's loss, the mean over
        its items, by its share of the items of its accumulation window over all ranks, so the step's gradient is
        that of the mean loss over every item of the global batch (`fabric.accumulate(num_items=...)`); None:
        divide by accumulate_grad_batches, as Lightning does."""
        args_check.check_positive_int("accumulate_grad_batches", accumulate_grad_batches)
        if accumulate_num_items is not None and not callable(accumulate_num_items):
            raise TypeError(f"accumulate_num_items takes a function batch -> number of items, or None; got "
                            f"{type(accumulate_num_items).__name__}")
        self.accumulate_grad_batches = accumulate_grad_batches
        self.accumulate_num_items = accumulate_num_items
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = args_check.check_clip_algorithm(gradient_clip_algorithm)
        self.detect_anomaly = detect_anomaly
        if sync_batchnorm and self.fabric.world_size > 1 and self.fabric.device.type == "cpu":
            raise ValueError("sync_batchnorm=True needs GPUs: torch's SyncBatchNorm (and DDP with it) does not run "
                             "on CPU processes; remove it or use accelerator='gpu'")
        self.sync_batchnorm = sync_batchnorm

    def _set_run_length(self, max_epochs: int | None, min_epochs: int | None, max_steps: int,
                        min_steps: int | None, max_time: str | timedelta | dict[str, int] | None, fast: int) -> None:
        """When fit stops (`trainer.max_epochs` is None until fit decides: `FitLoop.decide_max_epochs`);
        fast_dev_run: one epoch."""
        self.max_epochs = max_epochs
        self.min_epochs, self.max_steps, self.min_steps = min_epochs, max_steps, min_steps
        self._max_seconds = args_check.parse_duration("max_time", max_time)
        if fast:
            self.max_steps, self.max_epochs = fast, 1

    def _set_batches(self, limit_train_batches: int | float | None, limit_val_batches: int | float | None,
                     limit_test_batches: int | float | None, limit_predict_batches: int | float | None,
                     overfit_batches: int | float,
                     val_check_interval: int | float | str | timedelta | dict[str, int] | None,
                     check_val_every_n_epoch: int | None, num_sanity_val_steps: int | None, fast: int) -> None:
        """How many batches each stage runs, and when validation runs during fit."""
        args_check.check_positive_int("check_val_every_n_epoch", check_val_every_n_epoch, allow_none=True)
        self.check_val_every_n_epoch = check_val_every_n_epoch
        self.val_check_interval = 1.0 if val_check_interval is None else val_check_interval
        # A time: validation runs once that much wall time has passed since the last one, not at epoch ends.
        self._val_check_seconds = args_check.val_check_seconds(self.val_check_interval)
        self.overfit_batches = overfit_batches
        self.limit_train_batches = 1.0 if limit_train_batches is None else limit_train_batches
        self.limit_val_batches = 1.0 if limit_val_batches is None else limit_val_batches
        self.limit_test_batches = 1.0 if limit_test_batches is None else limit_test_batches
        self.limit_predict_batches = 1.0 if limit_predict_batches is None else limit_predict_batches
        self.num_sanity_val_steps = 2 if num_sanity_val_steps is None else num_sanity_val_steps
        if fast:
            self.limit_train_batches = self.limit_val_batches = fast
            self.limit_test_batches = self.limit_predict_batches = fast
            self.num_sanity_val_steps, self.val_check_interval, self.check_val_every_n_epoch = 0, 1.0, 1
            self._val_check_seconds = None
        if self.barebones:
            self.num_sanity_val_steps = 0

    def _set_loggers(self, logger: Logger | Iterable[Logger] | bool | None, log_every_n_steps: int | None,
                     fast: int) -> None:
        self.log_every_n_steps = 50 if log_every_n_steps is None else log_every_n_steps
        args_check.check_positive_int("log_every_n_steps", self.log_every_n_steps)
        self._logger_enabled = not (fast or self.barebones or logger is False)
        self._loggers = default_loggers(logger, self.default_root_dir) if self._logger_enabled else []

    def _set_callbacks(self, callbacks: list[Callback] | Callback | None, enable_checkpointing: bool | None,
                       enable_progress_bar: bool | None, enable_model_summary: bool | None) -> None:
        self.enable_checkpointing = not self.barebones if enable_checkpointing is None else enable_checkpointing
        self.enable_progress_bar = not self.barebones if enable_progress_bar is None else enable_progress_bar
        self.enable_model_summary = not self.barebones if enable_model_summary is None else enable_model_summary
        self._given_callbacks = args_check.with_default_callbacks(as_list(callbacks), self.enable_checkpointing,
                                                                  self.enable_progress_bar, self.enable_model_summary)
        if self._max_seconds is not None and not any(isinstance(c, Timer) for c in self._given_callbacks):
            self._given_callbacks.append(Timer(timedelta(seconds=self._max_seconds), interval="step", verbose=False))
        self.callbacks: list[Callback] = list(self._given_callbacks)

    # -- stages ---------------------------------------------------------------------------------------------------
    def fit(self, model: LightningModule, train_dataloaders: Any = None, val_dataloaders: Any = None,
            datamodule: LightningDataModule | None = None, ckpt_path: str | Path | None = None,
            weights_only: bool | None = None) -> None:
        """Train `model`; `ckpt_path` ("last", "best" or a file) resumes a previous run, read with torch's
        `weights_only` (None: its safe default; False unpickles anything: trusted files only)."""
        if isinstance(train_dataloaders, LightningDataModule):
            datamodule, train_dataloaders = train_dataloaders, None
        model = self._model_for("fit", model)
        self._check_sources(model, datamodule, train_dataloaders, val_dataloaders, "fit")
        self.run_state.dataloaders.update(train=train_dataloaders, val=val_dataloaders)
        self._launch("fit", model, datamodule, ckpt_path, weights_only)

    def validate(self, model: LightningModule | None = None, dataloaders: Any = None,
                 ckpt_path: str | Path | None = None, verbose: bool = True,
                 datamodule: LightningDataModule | None = None,
                 weights_only: bool | None = None) -> list[dict[str, float]]:
        """Run validation once; returns one dict of epoch metrics per dataloader."""
        return self._evaluate("validate", model, dataloaders, ckpt_path, verbose, datamodule, weights_only)

    def test(self, model: LightningModule | None = None, dataloaders: Any = None, ckpt_path: str | Path | None = None,
             verbose: bool = True, datamodule: LightningDataModule | None = None,
             weights_only: bool | None = None) -> list[dict[str, float]]:
        """Run the test set once; returns one dict of epoch metrics per dataloader."""
        return self._evaluate("test", model, dataloaders, ckpt_path, verbose, datamodule, weights_only)

    def predict(self, model: LightningModule | None = None, dataloaders: Any = None,
                datamodule: LightningDataModule | None = None, return_predictions: bool | None = None,
                ckpt_path: str | Path | None = None, weights_only: bool | None = None) -> list[Any] | None:
        """Run `predict_step` over the data; returns the predictions (a list per dataloader when several). Under
        DDP each process returns its own share (see loops/trainer/predict_loop.py)."""
        if isinstance(dataloaders, LightningDataModule):
            datamodule, dataloaders = dataloaders, None
        model = self._model_for("predict", model)
        self._check_sources(model, datamodule, dataloaders, None, "predict")
        self.run_state.dataloaders["predict"] = dataloaders
        self.run_state.return_predictions = True if return_predictions is None else return_predictions
        predictions: list[Any] | None = self._launch("predict", model, datamodule, ckpt_path, weights_only)
        return predictions

    def _evaluate(self, stage: str, model: LightningModule | None, dataloaders: Any, ckpt_path: Any, verbose: bool,
                  datamodule: LightningDataModule | None, weights_only: bool | None) -> list[dict[str, float]]:
        if isinstance(dataloaders, LightningDataModule):
            datamodule, dataloaders = dataloaders, None
        model = self._model_for(stage, model)
        step = "validation_step" if stage == "validate" else "test_step"
        if not overrides(model, step, LightningModule):
            raise NotImplementedError(f"{type(model).__name__} defines no {step}(); Trainer.{stage} needs it")
        if ckpt_path is None and model is self.lightning_module and self.checkpoint_callback is not None \
                and self.checkpoint_callback.best_model_path:
            ckpt_path = "best"
        self._check_sources(model, datamodule, dataloaders, None, stage)
        self.run_state.dataloaders["val" if stage == "validate" else "test"] = dataloaders
        results: list[dict[str, float]] = self._launch(stage, model, datamodule, ckpt_path, weights_only)
        if verbose and self.is_global_zero:
            print_results(stage, results)
        return results

    def _model_for(self, stage: str, model: LightningModule | None) -> LightningModule:
        """The stage's LightningModule: the one given (the module inside a `torch.compile`d one, whose settings
        compile the steps' module again around the strategy's wrapper), or the last one run."""
        if model is None and stage != "fit":
            if self.lightning_module is None:
                raise ValueError(f"Trainer.{stage}() needs a model: pass one, or call fit(model) first")
            return self.lightning_module
        if isinstance(model, torch.nn.Module):
            model, self.run_state.recompile = split_compiled(model)  # type: ignore[assignment]
        return model  # type: ignore[return-value]  # _check_sources names anything but a LightningModule

    def _router(self, model: LightningModule) -> torch.nn.Module:
        """What fabric sets up: the steps' router, compiled as the user's module was."""
        router = StepRouter(model)
        recompile = self.run_state.recompile
        return router if recompile is None else recompile(router)

    def _check_sources(self, model: Any, datamodule: Any, loaders: Any, val_loaders: Any, stage: str) -> None:
        if not isinstance(model, LightningModule):
            raise TypeError(f"Trainer.{stage} takes a loops.LightningModule; got {type(model).__name__}")
        if datamodule is not None and (loaders is not None or val_loaders is not None):
            raise ValueError(f"Trainer.{stage} got both dataloaders and a datamodule; pass one of them")
        if datamodule is not None and not isinstance(datamodule, LightningDataModule):
            raise TypeError(f"datamodule must be a loops.LightningDataModule; got {type(datamodule).__name__}")

    # -- running in every process -----------------------------------------------------------------------------------
    def _launch(self, stage: str, model: LightningModule, datamodule: LightningDataModule | None,
                ckpt_path: str | Path | None, weights_only: bool | None = None) -> Any:
        self._ran_here = False
        self.run_state.weights_only = weights_only
        payload = self.fabric.launch(_run_launched, self, stage, model, datamodule, ckpt_path)
        if not self._ran_here and payload is not None:  # the stage ran in spawned processes: adopt rank 0's result
            model.load_state_dict(payload["state_dict"])
            progress = self.run_state.progress
            progress.current_epoch, progress.global_step = payload["current_epoch"], payload["global_step"]
            self.run_state.metrics.callback_metrics = payload["callback_metrics"]
            agree_on_versions(self._loggers, lambda _: payload["logger_versions"])  # log_dir as the ranks saw it
            self.lightning_module = model
        return payload["result"] if payload is not None else None

    def _run(self, stage: str, model: LightningModule, datamodule: LightningDataModule | None,
             ckpt_path: str | Path | None) -> dict[str, Any]:
        self._ran_here = True
        state = self.run_state
        self.state.fn, self.state.status = TrainerFn(stage), TrainerStatus.RUNNING
        state.should_stop = False
        state.metrics.reset()  # each stage call publishes its own metrics, as in Lightning
        state.eval_batches_seen = {}
        if stage == "fit":
            self.fit_loop.decide_max_epochs()
        self.lightning_module, self.datamodule = model, datamodule
        model.trainer = self
        if datamodule is not None:
            datamodule.trainer = self
        self._resolve_log_dir()
        self.profiler._lightning_module = model
        self.profiler.setup(stage=stage, local_rank=self.local_rank if self.world_size > 1 else None,
                            log_dir=self.log_dir)
        state.hooks = hooks = HookTable(self, model, datamodule)
        self._attach_callbacks(model)
        state.custom_transfer = any(overrides(src, name, DataHooks) for name in _TRANSFER_HOOKS
                                    for src in (model, datamodule) if src is not None)
        result = None
        try:
            self._prepare_and_setup(stage, model, datamodule)
            path = state.ckpt_path = checkpointing.resolve_ckpt_path(self, ckpt_path, stage)
            model.zero_grad()  # no gradient of an earlier call reaches this one, as in Lightning
            if stage == "fit":
                self._fit(model, path)
            else:
                state.fabric_module = self.fabric.setup(self._router(model))
                if path is not None:
                    checkpointing.restore_model(self, path, stage)
                log_stage_start(self._loggers, model, self.datamodule)
                result = self._run_stage(stage)
        except BaseException as exception:
            self.state.status = TrainerStatus.INTERRUPTED
            hooks.call_callbacks("on_exception", exception)
            if datamodule is not None:
                hooks.call_on(datamodule, "on_exception", exception)
            if not isinstance(exception, KeyboardInterrupt):
                raise
            self.print("\nDetected KeyboardInterrupt, attempting graceful shutdown ...")
            result = KeyboardInterrupt
        finally:
            self._teardown(stage)
        if result is KeyboardInterrupt:  # after the callbacks' on_exception and teardown, exit as Lightning does
            raise SystemExit(1)
        if stage == "fit" and self.fit_loop.preempted:
            self._end_preempted()
        self.state.status = TrainerStatus.FINISHED
        return self._payload(model, result)

    def _payload(self, model: LightningModule, result: Any) -> dict[str, Any]:
        """What the stage hands back to the launching process, which adopts it when the stage ran in spawned
        processes (`_launch`)."""
        on_device = self.fabric.device.type != "cpu"
        state_dict = {k: v.cpu() for k, v in model.state_dict().items()} if on_device else model.state_dict()
        return {"result": result, "state_dict": state_dict, "current_epoch": self.current_epoch,
                "global_step": self.global_step, "callback_metrics": dict(self.callback_metrics),
                "logger_versions": [logger.version for logger in self._loggers if isinstance(logger, FolderLogger)]}

    def _prepare_and_setup(self, stage: str, model: LightningModule, datamodule: LightningDataModule | None) -> None:
        hooks = self.run_state.hooks
        for source in [s for s in (datamodule, model) if s is not None]:
            if overrides(source, "prepare_data", DataHooks):
                rank = self.local_rank if source.prepare_data_per_node else self.global_rank
                if rank == 0:
                    hooks.call_on(source, "prepare_data")
                self.fabric.barrier()
        if datamodule is not None:
            hooks.call_on(datamodule, "setup", stage)
        hooks.call_callbacks("setup", stage)
        hooks.call_on(model, "setup", stage)
        # Where set-up materialises a meta-device model shard by shard, the layers configure_model creates start
        # on the meta device: no rank ever holds the whole model.
        meta = self.fabric.strategy.materializes_meta_modules
        with self.fabric.init_module(empty_init=True) if meta else nullcontext():
            hooks.call_on(model, "configure_model")

    def _fit(self, model: LightningModule, ckpt_path: str | None) -> None:
        self._check_optimization(model)
        self._setup_optimization(model)
        if ckpt_path is not None:
            checkpoint = checkpointing.restore_model(self, ckpt_path, "fit")
            checkpointing.restore_training_state(self, checkpoint, ckpt_path)
        log_stage_start(self._loggers, model, self.datamodule)
        hooks = self.run_state.hooks
        self.training = True
        try:
            hooks.call("on_fit_start")
        except TunerExit:  # a Tuner's finder ran its search in on_fit_start: fit ends without training
            return
        with torch.autograd.set_detect_anomaly(True) if self.detect_anomaly else nullcontext():
            self.fit_loop.run()
        self.training = False
        if not self.fit_loop.preempted:
            hooks.call("on_fit_end")

    def _end_preempted(self) -> NoReturn:
        """After a preempted fit's teardown: under SLURM, when rank 0 received SIGUSR1 (the warning SLURM sends
        before the time limit), rank 0 puts the job back in the queue (its rerun resumes with `ckpt_path="last"`);
        a SIGTERM (`scancel`) stops it for good. Then every process exits with PREEMPTED_EXIT_STATUS."""
        if self.is_global_zero and SLURMEnvironment.detect() and self.fabric.preemption_signal == signal.SIGUSR1:
            requeue_job()
        raise SystemExit(PREEMPTED_EXIT_STATUS)

    def _check_optimization(self, model: LightningModule) -> None:
        """What fit needs from the module, and the flags that manual optimization cannot honour."""
        if not overrides(model, "training_step", LightningModule):
            raise NotImplementedError(f"{type(model).__name__} defines no training_step(self, batch, batch_idx); "
                                      "Trainer.fit needs it (it returns the loss)")
        if not model.automatic_optimization and self.gradient_clip_val:
            raise ValueError(f"gradient_clip_val={self.gradient_clip_val} clips automatically, which manual "
                             "optimization does not do; remove it and call self.clip_gradients(optimizer, ...) in "
                             "training_step")
        if not model.automatic_optimization and self.accumulate_num_items is not None:
            raise ValueError("accumulate_num_items weighs the losses of automatic optimization; with manual "
                             "optimization use fabric.accumulate(model, batches, window, num_items=...) yourself")
        if not model.automatic_optimization and self.on_oom == "reduce":
            raise ValueError("on_oom='reduce' runs a batch again as smaller micro-batches, which needs automatic "
                             "optimization; with manual optimization catch the error in training_step yourself "
                             "(fabric_kit.out_of_memory.OutOfMemoryAgreement) or pass on_oom='raise'")
        if not model.automatic_optimization and self.accumulate_grad_batches != 1:
            raise ValueError(f"accumulate_grad_batches={self.accumulate_grad_batches} needs automatic optimization; "
                             "with manual optimization step the optimizer every N batches yourself")

    def _setup_optimization(self, model: LightningModule) -> None:
        """The module's optimizers and schedulers, set up by fabric with the model, as the run state's handles."""
        state = self.run_state
        state.automatic = model.automatic_optimization
        optimizers, state.lr_scheduler_configs = parse_optimizers(state.hooks.call_on(model, "configure_optimizers"))
        if state.automatic:
            check_automatic_optimizers(model, len(optimizers))
        if self.sync_batchnorm and self.world_size > 1:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        state.fabric_module, fabric_optimizers = self._setup_model_and_optimizers(model, optimizers)
        state.optimizers = [LoopOptimizer(opt, self) for opt in fabric_optimizers]
        clips = self.gradient_clip_val or overrides(model, "configure_gradient_clipping", LightningModule)
        state.clip_hook = state.hooks.method("configure_gradient_clipping") if clips and state.automatic else None

    def _setup_model_and_optimizers(self, model: LightningModule, optimizers: list[torch.optim.Optimizer]
                                    ) -> tuple[FabricModule, tuple[Any, ...]]:
        """Most strategies take the model and its optimizers together (DeepSpeed must). Sharding strategies (FSDP)
        need optimizers built from the sharded parameters: the model is set up first and configure_optimizers runs
        again on it, as Lightning does under FSDP."""
        if not optimizers:
            return self.fabric.setup(self._router(model)), ()
        if not self.fabric.setup_module_first:
            setup = self.fabric.setup(self._router(model), *optimizers)
            return setup[0], setup[1:]
        state = self.run_state
        module = self.fabric.setup_module(self._router(model))
        optimizers, state.lr_scheduler_configs = parse_optimizers(state.hooks.call_on(model, "configure_optimizers"))
        fabric_optimizers = self.fabric.setup_optimizers(*optimizers)
        return module, fabric_optimizers if isinstance(fabric_optimizers, tuple) else (fabric_optimizers,)

    def _run_stage(self, stage: str) -> Any:
        model = self.lightning_module
        if stage == "predict":
            loaders, limits = self._eval_loaders("predict", self.limit_predict_batches)
            self.num_predict_batches = limits
            self.predicting = True
            return run_prediction(self, loaders, limits, self.run_state.return_predictions)
        source = "val" if stage == "validate" else "test"
        limit = self.limit_val_batches if stage == "validate" else self.limit_test_batches
        loaders, limits = self._eval_loaders(source, limit)
        if stage == "test":
            self.num_test_batches = limits
        if stage == "validate":
            self.fit_loop.val_loaders, self.fit_loop.num_val_batches = loaders, limits
            self.validating = True
        else:
            self.testing = True
        if not loaders:
            raise ValueError(f"Trainer.{stage} found no {source} data: pass dataloaders, a datamodule with "
                             f"{source}_dataloader(), or define {source}_dataloader() on {type(model).__name__}")
        self.run_state.metrics.reset()
        return run_evaluation(self, stage, loaders, limits)

    def _eval_loaders(self, source: str, limit: int | float) -> tuple[list[Any], list[int | float]]:
        state = self.run_state
        found = state.user_loaders[source] = find_loaders(source, state.dataloaders[source], state.hooks)
        loaders, limits = eval_loaders(self.fabric, found, source, limit, f"limit_{source}_batches",
                                       self.use_distributed_sampler, not state.custom_transfer)
        state.set_up_loaders[source] = loaders
        return loaders, limits

    def _teardown(self, stage: str) -> None:
        hooks = self.run_state.hooks
        if self.datamodule is not None:
            hooks.call_on(self.datamodule, "teardown", stage)
        hooks.call_callbacks("teardown", stage)
        hooks.call_on(hooks.pl_module, "teardown", stage)
        for logger in self._loggers:
            if hasattr(logger, "finalize"):
                logger.finalize("failed" if self.interrupted else "success")
        self.profiler.describe()
        self.training = self.validating = self.testing = self.predicting = self.sanity_checking = False

    def _attach_callbacks(self, model: LightningModule) -> None:
        """Trainer callbacks plus the module's `configure_callbacks` (replacing ones of the same type), with
        checkpoint callbacks last so they see what the others did."""
        callbacks = list(self._given_callbacks)
        extra = as_list(self.run_state.hooks.call_on(model, "configure_callbacks"))
        if extra:
            types = {type(c) for c in extra}
            callbacks = [c for c in callbacks if type(c) not in types] + extra
        self.callbacks = [c for c in callbacks if not isinstance(c, Checkpoint)] + \
                         [c for c in callbacks if isinstance(c, Checkpoint)]

    # -- called by the module ---------------------------------------------------------------------------------------
    def _log(self, name: str, value: Any, prog_bar: bool, logger: bool, on_step: bool | None, on_epoch: bool | None,
             reduce_fx: Any, enable_graph: bool, sync_dist: bool, group: Any, add_dataloader_idx: bool,
             batch_size: int | None, rank_zero_only: bool) -> None:
        scope = self.run_state.scope
        results, hook = scope.results, scope.hook
        if results is None or hook in NO_LOGGING:
            raise RuntimeError(f"self.log({name!r}) was called in {hook or 'no hook of the Trainer'}, outside the "
                               "hooks that can log: training, validation and test steps, their batch / epoch hooks "
                               "and on_train/validation/test_start (not predict, setup, on_fit_start or checkpoint "
                               "hooks); write to self.logger.experiment directly there")
        if self.barebones:
            raise RuntimeError(f"self.log({name!r}) is turned off by Trainer(barebones=True)")
        if scope.pulling_step is not None and batch_size is None:
            raise ValueError(f"self.log({name!r}) needs batch_size=... with {scope.pulling_step}(self, "
                             "dataloader_iter): the step fetches its batches, so their size is not known (as in "
                             "Lightning)")
        suffix = f"/dataloader_idx_{scope.dataloader_idx}" if scope.dataloader_idx is not None and add_dataloader_idx \
            else ""
        # rank_zero_only: logged from rank 0 alone, so never synced (a collective there would wait for the others).
        # `logger` is the call's: `logged_metrics` and validate()/test()'s results hold it also without a logger.
        results.log(name, suffix, value, prog_bar, logger,
                    scope.on_step if on_step is None else on_step, scope.on_epoch if on_epoch is None else on_epoch,
                    reduce_fx, enable_graph, sync_dist and not rank_zero_only, group, batch_size, scope.batch)

    def _manual_backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        if self.run_state.automatic:
            raise RuntimeError("manual_backward is for manual optimization (self.automatic_optimization = False); "
                               "with automatic optimization return the loss from training_step")
        manual_backward(self, loss, *args, **kwargs)

    def _resolve_log_dir(self) -> None:
        """Every process takes rank 0's `version_N` for each folder logger (rank 0 alone looks at the disk), so
        `log_dir` and the checkpoint folder under it are the same path on every rank."""
        agree_on_versions(self._loggers, self.fabric.broadcast if self.world_size > 1 else lambda versions: versions)

    def print(self, *args: Any, **kwargs: Any) -> None:
        self.fabric.print(*args, **kwargs)

    def init_module(self, empty_init: bool | None = None) -> AbstractContextManager:
        """Build the model inside this context to create it on the device in the precision's dtype."""
        return self.fabric.init_module(empty_init)

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def save_checkpoint(self, filepath: str | Path, weights_only: bool = False, storage_options: Any = None) -> None:
        """Write a checkpoint of the running (or finished) stage; every process must call it."""
        if self.lightning_module is None:
            raise RuntimeError("save_checkpoint needs a model: call it during or after fit/validate/test")
        if storage_options is not None:
            raise ValueError(f"storage_options={storage_options!r} is not supported; pass None")
        with self.profiler.profile("save_checkpoint"):
            checkpointing.save(self, str(filepath), weights_only)


def _run_launched(fabric: Fabric, trainer: Trainer, stage: str, model: LightningModule,
                  datamodule: LightningDataModule | None, ckpt_path: str | Path | None) -> dict[str, Any]:
    """What every process runs (module level, so spawned processes can unpickle it)."""
    return trainer._run(stage, model, datamodule, ckpt_path)
