"""Lightning's `lightning.fabric.utilities.apply_func`; defined in `fabric_kit.collections` (`move_data_to_device`
is Lightning's name for `move_to_device`)."""
from fabric_kit.collections import apply_to_collection, convert_tensors_to_scalars
from fabric_kit.collections import move_to_device as move_data_to_device

__all__ = ["apply_to_collection", "convert_tensors_to_scalars", "move_data_to_device"]
