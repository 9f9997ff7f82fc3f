"""Helpers under Lightning's import paths (`lightning.pytorch.utilities`, `.rank_zero`, `.model_helpers`,
`.combined_loader`), each the one implementation in fabric_kit or loops."""
from fabric_kit.utilities import AttributeDict, move_data_to_device, suggested_max_num_workers
from loops.utilities import model_helpers
from loops.utilities.combined_loader import CombinedLoader
from loops.utilities.model_helpers import is_overridden
from loops.utilities.rank_zero import rank_zero_info, rank_zero_only, rank_zero_warn

__all__ = ["AttributeDict", "CombinedLoader", "is_overridden", "model_helpers", "move_data_to_device",
           "rank_zero_info", "rank_zero_only", "rank_zero_warn", "suggested_max_num_workers"]
