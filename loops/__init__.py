"""Lightning's Trainer layer (Trainer, LightningModule, LightningDataModule, Callback) rebuilt on fabric_kit's
public API: Lightning scripts run with only their import line changed. `import loops as L` gives `L.Fabric` too, as
`import lightning as L` does."""
from fabric_kit import Fabric, seed_everything
from loops import accelerators, plugins, strategies  # noqa: F401  (`L.strategies.DDPStrategy`, as in Lightning)
from loops.callbacks.callback import Callback
from loops.core.datamodule import LightningDataModule
from loops.core.module import LightningModule
from loops.logo import cli_lightning_logo
from loops.trainer.trainer import Trainer
from loops.utilities import rank_zero  # noqa: F401  (gives lightning_utilities' rank_zero_only this rank)

__all__ = ["Callback", "Fabric", "LightningDataModule", "LightningModule", "Trainer", "cli_lightning_logo",
           "seed_everything"]
