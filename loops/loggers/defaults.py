"""What the Trainer logs to and what it logs first: the `logger=` argument turned into a list (TensorBoard by
default when tensorboardX is installed, else CSV), and the hyperparameters every logger receives as a stage starts."""
from __future__ import annotations

import importlib.util
from typing import Any

from torch import Tensor

from loops.loggers.csv_logs import CSVLogger
from loops.loggers.tensorboard import TensorBoardLogger


def default_loggers(logger: Any, default_root_dir: str) -> list[Any]:
    """`logger=None` or True: a TensorBoardLogger (tensorboardX installed) or a CSVLogger in
    `default_root_dir/lightning_logs`; False: none; a logger or an iterable of loggers: those."""
    if logger is None or logger is True:
        if importlib.util.find_spec("tensorboardX") is not None:
            return [TensorBoardLogger(save_dir=default_root_dir)]
        return [CSVLogger(save_dir=default_root_dir)]
    if logger is False:
        return []
    loggers = list(logger) if isinstance(logger, (list, tuple)) else [logger]
    wrong = [type(item).__name__ for item in loggers if not callable(getattr(item, "log_metrics", None))]
    if wrong:
        raise TypeError(f"logger= takes True, False, None, a logger or a list of loggers (objects with "
                        f"log_metrics); got {wrong}")
    return loggers


def hyperparameters_to_log(module: Any, datamodule: Any) -> dict[str, Any] | None:
    """The module's and datamodule's `hparams_initial` merged (None when both turned logging off); a key both
    hold with different values is an error naming it."""
    module_logs = getattr(module, "_log_hyperparams", False)
    datamodule_logs = datamodule is not None and getattr(datamodule, "_log_hyperparams", False)
    if not (module_logs or datamodule_logs):
        return None
    params = dict(module.hparams_initial) if module_logs else {}
    if datamodule_logs:
        theirs = dict(datamodule.hparams_initial)
        clashing = sorted(key for key in params.keys() & theirs.keys() if not _same(params[key], theirs[key]))
        if clashing:
            raise RuntimeError(f"the hyperparameters {clashing} are saved by both the LightningModule and the "
                               "LightningDataModule with different values; rename one of them or make them equal")
        params.update(theirs)
    params.pop("_class_path", None)
    return params


def _same(first: Any, second: Any) -> bool:
    if isinstance(first, Tensor) or isinstance(second, Tensor):
        return first is second
    return type(first) is type(second) and first == second


def log_stage_start(loggers: list[Any], model: Any, datamodule: Any) -> None:
    """The module's and datamodule's initial hyperparameters (those `save_hyperparameters(logger=True)` recorded)
    and the model's graph to every logger, as each stage starts."""
    if not loggers:
        return
    params = hyperparameters_to_log(model, datamodule)
    for logger in loggers:
        if params is not None and hasattr(logger, "log_hyperparams"):
            logger.log_hyperparams(params)
        if hasattr(logger, "log_graph"):
            logger.log_graph(model)
        if hasattr(logger, "save"):
            logger.save()
