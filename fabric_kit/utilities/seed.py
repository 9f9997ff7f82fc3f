"""Lightning's `lightning.fabric.utilities.seed`; defined in `fabric_kit.seed`."""
from fabric_kit.seed import isolate_rng, reset_seed, seed_everything

__all__ = ["isolate_rng", "reset_seed", "seed_everything"]
