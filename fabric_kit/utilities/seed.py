"""Lightning's `lightning.fabric.utilities.seed`; defined in `fabric_kit.seed`."""
from fabric_kit.seed import seed_everything

__all__ = ["seed_everything"]
