"""Lightning's `lightning.fabric.utilities.rank_zero`; defined in `fabric_kit.rank_zero`."""
from fabric_kit.rank_zero import rank_zero_info, rank_zero_only, rank_zero_warn

__all__ = ["rank_zero_info", "rank_zero_only", "rank_zero_warn"]
