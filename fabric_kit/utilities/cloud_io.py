"""Lightning's `lightning.fabric.utilities.cloud_io`; defined in `fabric_kit.filesystem`."""
from fabric_kit.filesystem import get_filesystem

__all__ = ["get_filesystem"]
