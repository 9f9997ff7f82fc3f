"""fabric_kit: run a plain PyTorch loop on any device, process count and precision with a few changed lines."""
from fabric_kit.fabric import Fabric
from fabric_kit.seed import seed_everything
from fabric_kit.wrappers import is_wrapped

__all__ = ["Fabric", "is_wrapped", "seed_everything"]
__version__ = "0.1.0"
