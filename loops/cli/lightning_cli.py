"""LightningCLI: one command line for fit / validate / test / predict whose options are the `__init__` arguments of
the model, the datamodule and the Trainer, set from YAML files and overrides (Lightning 2.x's semantics)."""
from __future__ import annotations

import os
import random
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from jsonargparse import Namespace, class_from_function
from torch.optim import Optimizer

from fabric_kit import seed_everything
from loops.cli.optimizers import SCHEDULER_BASES, ReduceLROnPlateau, replace_configure_optimizers
from loops.cli.parser import AUTOMATIC, ConfigFileAction, LightningArgumentParser, with_class_path
from loops.cli.save_config import SaveConfigCallback
from loops.core.datamodule import LightningDataModule
from loops.core.module import LightningModule
from loops.core.saving import CHECKPOINT_HYPER_PARAMS_KEY, read_checkpoint
from loops.trainer.trainer import Trainer

ArgsType = list[str] | dict[str, Any] | Namespace | None
"""What `LightningCLI(args=...)` takes instead of `sys.argv[1:]`: a list of command-line strings, or a config as
a dict or Namespace."""

_SEED_VARIABLE = "FABRIC_KIT_GLOBAL_SEED"  # exported by seed_everything; processes a Trainer starts inherit it


class LightningCLI:
    """Parses the command line (or `args`), seeds, builds the model, datamodule and Trainer, then runs the
    subcommand: `python train.py fit|validate|test|predict [--config FILE ...] [--group.option VALUE ...]`.

    `model_class` / `datamodule_class` of None accept any subclass by `class_path`; `subclass_mode_*` does the same
    for subclasses of the given class. `trainer_defaults` changes the Trainer's defaults (its `callbacks` are always
    added and not configurable). `seed_everything_default`: an int, True (a random seed, saved in the config) or
    False (no seeding). `run=False` builds everything without subcommands and runs nothing. Override the
    `add_arguments_to_parser`, `before_*`/`after_*` hooks and `configure_optimizers` to customise."""

    def __init__(self, model_class: type[LightningModule] | Callable[..., LightningModule] | None = None,
                 datamodule_class: type[LightningDataModule] | Callable[..., LightningDataModule] | None = None,
                 save_config_callback: type[SaveConfigCallback] | None = SaveConfigCallback,
                 save_config_kwargs: dict[str, Any] | None = None,
                 trainer_class: type[Trainer] | Callable[..., Trainer] = Trainer,
                 trainer_defaults: dict[str, Any] | None = None, seed_everything_default: bool | int = True,
                 parser_kwargs: dict[str, Any] | None = None,
                 parser_class: type[LightningArgumentParser] = LightningArgumentParser,
                 subclass_mode_model: bool = False, subclass_mode_data: bool = False, args: ArgsType = None,
                 run: bool = True, auto_configure_optimizers: bool = True) -> None:
        self.save_config_callback = save_config_callback
        self.save_config_kwargs = save_config_kwargs or {}
        self.trainer_class = trainer_class
        self.trainer_defaults = trainer_defaults or {}
        self.seed_everything_default = seed_everything_default
        self.parser_class = parser_class
        self.auto_configure_optimizers = auto_configure_optimizers
        self.model_class, self.datamodule_class = model_class, datamodule_class
        self._model_class = model_class or LightningModule
        self._datamodule_class = datamodule_class or LightningDataModule
        self.subclass_mode_model = model_class is None or subclass_mode_model
        self.subclass_mode_data = datamodule_class is None or subclass_mode_data

        parser_kwargs = parser_kwargs or {}
        main_kwargs = {k: v for k, v in parser_kwargs.items() if k not in self.subcommands()}
        self.setup_parser(run, main_kwargs, {k: v for k, v in parser_kwargs.items() if k in self.subcommands()})
        self.parse_arguments(self.parser, args)
        self._parse_ckpt_path()
        self.subcommand: str | None = self.config["subcommand"] if run else None
        self._set_seed()
        self.before_instantiate_classes()
        with self._bad_config_exits(self._parser(self.subcommand)):
            self.instantiate_classes()
        self.after_instantiate_classes()
        if self.subcommand is not None:
            self._run_subcommand(self.subcommand)

    # -- the parser -----------------------------------------------------------------------------------------------
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Each subcommand (a Trainer method) and the method arguments the CLI fills itself."""
        return {"fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
                "validate": {"model", "dataloaders", "datamodule"},
                "test": {"model", "dataloaders", "datamodule"},
                "predict": {"model", "dataloaders", "datamodule"}}

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """A parser with `-c/--config` (YAML or JSON files; several allowed, later ones win) and `--print_config`."""
        parser = self.parser_class(**kwargs)
        parser.add_argument("-c", "--config", action=ConfigFileAction,
                            help="Path to a configuration file in YAML or JSON; may be repeated, later files win.")
        return parser

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict[str, Any],
                     subparser_kwargs: dict[str, dict[str, Any]]) -> None:
        self.parser = self.init_parser(**main_kwargs)
        self._subcommand_parsers: dict[str, LightningArgumentParser] = {}
        self._subcommand_method_arguments: dict[str, list[str]] = {}
        if not add_subcommands:
            self._add_arguments(self.parser)
            return
        subcommands = self.parser.add_subcommands()
        trainer_class = self.trainer_class if isinstance(self.trainer_class, type) else \
            class_from_function(self.trainer_class)
        for name, skip in self.subcommands().items():
            doc = (getattr(trainer_class, name).__doc__ or "").strip()
            kwargs = {"description": doc.splitlines()[0] if doc else None, **subparser_kwargs.get(name, {})}
            parser = self.init_parser(**kwargs)
            self._add_arguments(parser)
            self._subcommand_method_arguments[name] = parser.add_method_arguments(trainer_class, name, skip=skip)
            self._subcommand_parsers[name] = parser
            subcommands.add_subcommand(name, parser, help=kwargs["description"])

    def _add_arguments(self, parser: LightningArgumentParser) -> None:
        self.add_default_arguments_to_parser(parser)
        self.add_core_arguments_to_parser(parser)
        self.add_arguments_to_parser(parser)
        if self.auto_configure_optimizers:
            if not parser._optimizers:
                parser.add_optimizer_args((Optimizer,))
            if not parser._lr_schedulers:
                parser.add_lr_scheduler_args(SCHEDULER_BASES)

    def add_default_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--seed_everything", type=bool | int, default=self.seed_everything_default,
                            help="Seed every random generator with this int before building anything; true picks "
                                 "a random seed (written to the saved config), false does not seed.")

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """`trainer`, `model` and `data` groups; the datamodule is optional when no class was given (the model's
        own dataloaders are used)."""
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({f"trainer.{k}": v for k, v in self.trainer_defaults.items() if k != "callbacks"})
        parser.add_lightning_class_args(self._model_class, "model", subclass_mode=self.subclass_mode_model)
        parser.add_lightning_class_args(self._datamodule_class, "data", subclass_mode=self.subclass_mode_data,
                                        required=self.datamodule_class is not None)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Override to add options or links (`parser.link_arguments`, `parser.add_lightning_class_args` for a
        callback that is always there, `parser.add_optimizer_args`)."""

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """`self.config` from `args` (a list of strings, a dict or a Namespace) or `sys.argv[1:]`."""
        if isinstance(args, (dict, Namespace)):
            self.config = parser.parse_object(args)
        else:
            self.config = parser.parse_args(args)

    def _parse_ckpt_path(self) -> None:
        """`--ckpt_path <file>`: the model is built from the hyperparameters the checkpoint saved, which win over
        the config and the command line (Lightning's rule), so the weights fit the model they are loaded into."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not os.path.isfile(ckpt_path):
            return
        hparams = dict(read_checkpoint(ckpt_path).get(CHECKPOINT_HYPER_PARAMS_KEY) or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write(f"error: --ckpt_path {ckpt_path}: its saved hyperparameters {sorted(hparams)} are not "
                             "options of the model\n")
            raise

    def _parser(self, subcommand: str | None) -> LightningArgumentParser:
        return self.parser if subcommand is None else self._subcommand_parsers[subcommand]

    def _get(self, config: Namespace, key: str, default: Any = None) -> Any:
        """`key` of the subcommand's part of `config` (or of the whole config when there is no subcommand)."""
        return config.get(str(self.subcommand), config).get(key, default)

    # -- seeding and building -------------------------------------------------------------------------------------
    def _set_seed(self) -> None:
        seed = self._get(self.config, "seed_everything")
        if seed is False:
            return
        if seed is True:  # a process the Trainer started for another rank inherits the seed rank 0 picked
            exported = os.environ.get(_SEED_VARIABLE)
            seed = int(exported) if exported is not None else random.randint(0, 2**32 - 1)
        seed = seed_everything(seed, workers=True)
        if self.subcommand is None:
            self.config["seed_everything"] = seed
        else:
            self.config[self.subcommand]["seed_everything"] = seed

    def before_instantiate_classes(self) -> None:
        """Runs after parsing and seeding, before anything is built."""

    def instantiate_classes(self) -> None:
        """Builds `self.model`, `self.datamodule` and `self.trainer` (in that order) from `self.config`."""
        self.config_init = self.parser.instantiate(self.config)
        self.datamodule = self._get(self.config_init, "data")
        self.model = self._get(self.config_init, "model")
        self._add_configure_optimizers_method_to_model(self.subcommand)
        self.trainer = self.instantiate_trainer()

    def after_instantiate_classes(self) -> None:
        """Runs after everything is built, before the subcommand."""

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The Trainer from its config group and `kwargs`, with the callbacks of `trainer_defaults`, of callback
        groups added with `add_lightning_class_args`, and the config-saving one (not under fast_dev_run)."""
        parser = self._parser(self.subcommand)
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        callbacks = config.get("callbacks")
        callbacks = [] if callbacks is None else list(callbacks) if isinstance(callbacks, list) else [callbacks]
        callbacks += [self._get(self.config_init, key) for key in parser.callback_keys]
        fixed = self.trainer_defaults.get("callbacks", [])
        callbacks += fixed if isinstance(fixed, list) else [fixed]
        if self.save_config_callback is not None and not config.get("fast_dev_run"):
            callbacks.append(self.save_config_callback(parser, self.config.get(str(self.subcommand), self.config),
                                                       **self.save_config_kwargs))
        config["callbacks"] = callbacks
        return self.trainer_class(**config)

    @staticmethod
    def configure_optimizers(lightning_module: LightningModule, optimizer: Optimizer,
                             lr_scheduler: Any = None) -> Any:
        """What the model's `configure_optimizers` returns when the optimizer comes from the config: the optimizer,
        with its scheduler if one was configured (ReduceLROnPlateau with the metric it monitors)."""
        if lr_scheduler is None:
            return optimizer
        if isinstance(lr_scheduler, ReduceLROnPlateau):
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": lr_scheduler, "monitor": lr_scheduler.monitor}}
        return [optimizer], [lr_scheduler]

    def _add_configure_optimizers_method_to_model(self, subcommand: str | None) -> None:
        """When `--optimizer` was given, the model's `configure_optimizers` builds it (and `--lr_scheduler`)."""
        if not self.auto_configure_optimizers:
            return
        parser = self._parser(subcommand)
        optimizers = [key for key, (_, link) in parser._optimizers.items() if link == AUTOMATIC]
        schedulers = [key for key, (_, link) in parser._lr_schedulers.items() if link == AUTOMATIC]
        if len(optimizers) > 1 or len(schedulers) > 1:
            raise ValueError(f"{type(self).__name__} builds at most one optimizer and one LR scheduler itself; "
                             f"found {optimizers + schedulers} with link_to='AUTOMATIC'. Give the others a link_to "
                             "and build them in the model's configure_optimizers")
        if not optimizers:
            return
        optimizer_init = self._class_config(parser._optimizers, optimizers[0])
        if optimizer_init is None:  # no optimizer on the command line or in the config: the model's own runs
            return
        scheduler_init = self._class_config(parser._lr_schedulers, schedulers[0]) if schedulers else None
        if type(self.model).configure_optimizers is not LightningModule.configure_optimizers:
            warnings.warn(f"{type(self.model).__name__}.configure_optimizers is replaced by the optimizer from the "
                          f"config ({optimizer_init['class_path']})", stacklevel=2)
        replace_configure_optimizers(self.model, optimizer_init, scheduler_init, self.configure_optimizers)

    def _class_config(self, register: dict[str, Any], key: str) -> dict[str, Any] | None:
        value = self._get(self.config_init, key)
        classes = register[key][0]
        if not isinstance(classes, tuple):  # options of one class hold only its init args
            return with_class_path(classes, value)
        return value.as_dict() if isinstance(value, Namespace) else value

    # -- running --------------------------------------------------------------------------------------------------
    def _run_subcommand(self, subcommand: str) -> None:
        """`before_<subcommand>()`, then `self.<subcommand>` if defined, else the Trainer's, then `after_*`."""
        before = getattr(self, f"before_{subcommand}", None)
        if callable(before):
            before()
        run = getattr(self, subcommand, getattr(self.trainer, subcommand))
        kwargs = self._prepare_subcommand_kwargs(subcommand)
        self._check_named_checkpoint(subcommand, kwargs.get("ckpt_path"))
        run(**kwargs)
        after = getattr(self, f"after_{subcommand}", None)
        if callable(after):
            after()

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        given = self.config_init[subcommand]
        kwargs = {k: v for k, v in given.items() if k in self._subcommand_method_arguments[subcommand]}
        kwargs["model"] = self.model
        if self.datamodule is not None:
            kwargs["datamodule"] = self.datamodule
        return kwargs

    def _check_named_checkpoint(self, subcommand: str, ckpt_path: Any) -> None:
        """`--ckpt_path best|last` names a checkpoint that a fit in this process wrote, or one recorded in a
        checkpoint callback's `dirpath` by an earlier run; with neither there is nothing to load."""
        if ckpt_path not in ("best", "last"):
            return
        callbacks = self.trainer.checkpoint_callbacks
        if any(getattr(cb, f"{ckpt_path}_model_path", "") for cb in callbacks):
            return
        dirpaths = [getattr(cb, "dirpath", None) for cb in callbacks]
        if any(path and os.path.isdir(path) and any(name.endswith(".ckpt") for name in os.listdir(path))
               for path in dirpaths):
            return
        self._parser(subcommand).error(
            f"--ckpt_path {ckpt_path}: no checkpoint callback of this {subcommand} run knows a {ckpt_path} checkpoint "
            f"(one from a fit in the same process, e.g. in after_fit, or recorded in a ModelCheckpoint dirpath given "
            "in the config); pass the checkpoint file instead: --ckpt_path <log_dir>/checkpoints/<name>.ckpt")

    @staticmethod
    @contextmanager
    def _bad_config_exits(parser: LightningArgumentParser) -> Iterator[None]:
        """A class refusing a config value (ValueError / TypeError from its `__init__`) is a usage error: its
        message and exit status 2, as for a value the parser refused. JSONARGPARSE_DEBUG=1 shows the traceback."""
        try:
            yield
        except (ValueError, TypeError) as refused:
            if os.environ.get("JSONARGPARSE_DEBUG"):
                raise
            parser.error(f"the config was parsed but building from it failed: {type(refused).__name__}: {refused}")
