"""Lightning's `lightning.fabric.utilities.seed`; defined in `fabric_kit.seed`."""
from fabric_kit.seed import reset_seed, seed_everything

__all__ = ["reset_seed", "seed_everything"]
