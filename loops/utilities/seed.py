"""Lightning's `lightning.pytorch.utilities.seed`: `isolate_rng`, defined in `fabric_kit.seed`."""
from fabric_kit.utilities.seed import isolate_rng

__all__ = ["isolate_rng"]
