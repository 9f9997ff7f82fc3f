"""LightningArgumentParser: jsonargparse's parser plus the groups a LightningCLI is made of (Trainer, model,
datamodule, callbacks, optimizer, LR scheduler), each remembered so the CLI knows what to build from it."""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, class_from_function
from torch.optim import Optimizer

from loops.callbacks.callback import Callback
from loops.cli.optimizers import SCHEDULER_BASES
from loops.core.datamodule import LightningDataModule
from loops.core.module import LightningModule
from loops.trainer.trainer import Trainer

AUTOMATIC = "AUTOMATIC"
"""`link_to` value meaning: the CLI replaces the model's `configure_optimizers` with the configured one."""

_LIGHTNING_CLASSES = (Trainer, LightningModule, LightningDataModule, Callback)
ClassOrClasses = type | tuple[type, ...]


class LightningArgumentParser(ArgumentParser):
    """Reads options from type hints and docstrings, YAML files (`--config`, several allowed, later ones win) and
    the command line. Environment variables (`PL_TRAINER__MAX_EPOCHS=5`) only with `default_env=True`."""

    def __init__(self, *args: Any, description: str = "loops Trainer command line", env_prefix: str = "PL",
                 default_env: bool = False, allow_abbrev: bool = False, **kwargs: Any) -> None:
        # No abbreviations: a misspelt option (--trainer.max_epoch) must be an error, not a silent prefix match.
        super().__init__(*args, description=description, env_prefix=env_prefix, default_env=default_env,
                         allow_abbrev=allow_abbrev, **kwargs)
        self.callback_keys: list[str] = []
        self._optimizers: dict[str, tuple[ClassOrClasses, str]] = {}
        self._lr_schedulers: dict[str, tuple[ClassOrClasses, str]] = {}

    def add_lightning_class_args(self, lightning_class: type | Callable[..., Any], nested_key: str,
                                 subclass_mode: bool = False, required: bool = True) -> list[str]:
        """Options under `nested_key` for every `__init__` argument of a Trainer, LightningModule,
        LightningDataModule or Callback class (or a function returning one). `subclass_mode` accepts any subclass,
        chosen by `class_path` (or its bare name) with `init_args`."""
        if callable(lightning_class) and not isinstance(lightning_class, type):
            lightning_class = class_from_function(lightning_class)
        if not (isinstance(lightning_class, type) and issubclass(lightning_class, _LIGHTNING_CLASSES)):
            raise TypeError(f"add_lightning_class_args takes a subclass of Trainer, LightningModule, "
                            f"LightningDataModule or Callback, or a function returning one; got {lightning_class!r}")
        if issubclass(lightning_class, Callback):
            self.callback_keys.append(nested_key)
        if subclass_mode:
            return self.add_subclass_arguments(lightning_class, nested_key, fail_untyped=False, required=required)
        # The Trainer is built by the CLI itself (it adds callbacks first); the others by the parser.
        return self.add_class_arguments(lightning_class, nested_key, fail_untyped=False, sub_configs=True,
                                        instantiate=not issubclass(lightning_class, Trainer))

    def add_optimizer_args(self, optimizer_class: ClassOrClasses = (Optimizer,), nested_key: str = "optimizer",
                           link_to: str = AUTOMATIC) -> None:
        """`--optimizer.lr 0.1` for one optimizer class, or any subclass of a tuple of classes
        (`--optimizer Adam --optimizer.lr 0.1`). `params` comes from the model. `link_to` names a model argument to
        receive the config instead of the automatic `configure_optimizers`."""
        self._add_built_later(optimizer_class, Optimizer, nested_key, "params", link_to, self._optimizers)

    def add_lr_scheduler_args(self, lr_scheduler_class: ClassOrClasses = SCHEDULER_BASES,
                              nested_key: str = "lr_scheduler", link_to: str = AUTOMATIC) -> None:
        """As `add_optimizer_args`, for an LR scheduler (`--lr_scheduler StepLR --lr_scheduler.step_size 5`);
        `optimizer` comes from the configured optimizer."""
        self._add_built_later(lr_scheduler_class, SCHEDULER_BASES, nested_key, "optimizer", link_to,
                              self._lr_schedulers)

    def _add_built_later(self, classes: ClassOrClasses, base: ClassOrClasses, nested_key: str, given: str,
                         link_to: str, register: dict[str, tuple[ClassOrClasses, str]]) -> None:
        """Options for a class built after the model (from its parameters), so the parser must not build it."""
        for cls in classes if isinstance(classes, tuple) else (classes,):
            if not (isinstance(cls, type) and issubclass(cls, base)):
                raise TypeError(f"{nested_key}: {cls!r} is not a subclass of {base}")
        kwargs: dict[str, Any] = {"instantiate": False, "fail_untyped": False, "skip": {given}}
        if isinstance(classes, tuple):
            self.add_subclass_arguments(classes, nested_key, **kwargs)
        else:
            self.add_class_arguments(classes, nested_key, sub_configs=True, **kwargs)
        register[nested_key] = (classes, link_to)
        if link_to != AUTOMATIC:
            compute = None if isinstance(classes, tuple) else (lambda init_args: with_class_path(classes, init_args))
            self.link_arguments(nested_key, link_to, compute_fn=compute)


class ConfigFileAction(ActionConfigFile):
    """`--config FILE`: a file that does not parse is an error naming the file, not only a line and column."""

    def __call__(self, parser: Any, cfg: Any, values: Any, option_string: str | None = None) -> None:
        if isinstance(values, str) and os.path.isfile(values):
            with open(values) as stream:
                try:
                    yaml.compose(stream, Loader=yaml.SafeLoader)  # syntax only: builds no values
                except yaml.YAMLError as error:
                    raise TypeError(f"config file {values!r} is not valid YAML: {error}") from None
        try:
            super().__call__(parser, cfg, values, option_string)
        except (TypeError, ValueError) as error:
            raise type(error)(f"config file {values!r}: {error}") from error


def with_class_path(cls: type, init_args: Any) -> dict[str, Any]:
    """`{"class_path": ..., "init_args": ...}` for options added from one class (they hold only the init args)."""
    if hasattr(init_args, "as_dict"):
        init_args = init_args.as_dict()
    return {"class_path": f"{cls.__module__}.{cls.__name__}", "init_args": dict(init_args or {})}
