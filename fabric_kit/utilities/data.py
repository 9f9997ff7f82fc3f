"""Lightning's `lightning.fabric.utilities.data`; defined in `fabric_kit.attribute_dict`, `fabric_kit.data.length`
and `fabric_kit.data.workers`."""
from fabric_kit.attribute_dict import AttributeDict
from fabric_kit.data.length import has_len
from fabric_kit.data.workers import suggested_max_num_workers

__all__ = ["AttributeDict", "has_len", "suggested_max_num_workers"]
