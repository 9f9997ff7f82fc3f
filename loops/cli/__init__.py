"""A config-driven command line for the Trainer, as Lightning's `LightningCLI`:

    python train.py fit --config config.yaml --trainer.max_epochs 30 --model.lr 0.01

builds the model, the datamodule and the Trainer from their type hints, YAML files and command-line overrides.
Argument parsing is jsonargparse's (the `cli` extra); `import loops` does not import it, only `import loops.cli`.
"""
try:
    import docstring_parser  # noqa: F401  (help text from docstrings)
    import jsonargparse  # noqa: F401
except ImportError as missing:
    raise ModuleNotFoundError(f"loops.cli needs jsonargparse[signatures] ({missing.name} is not installed); "
                              "install it with: pip install 'fabric_kit[cli]'") from missing

from loops.cli.lightning_cli import ArgsType, LightningCLI
from loops.cli.optimizers import LRSchedulerCallable, OptimizerCallable, ReduceLROnPlateau, instantiate_class
from loops.cli.parser import LightningArgumentParser
from loops.cli.save_config import SaveConfigCallback

__all__ = ["ArgsType", "LRSchedulerCallable", "LightningArgumentParser", "LightningCLI", "OptimizerCallable",
           "ReduceLROnPlateau", "SaveConfigCallback", "instantiate_class"]
