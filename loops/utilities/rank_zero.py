"""Lightning's `lightning.pytorch.utilities.rank_zero`: fabric_kit's `rank_zero_only` & co. Importing loops also
gives lightning_utilities' `rank_zero_only.rank` this process's rank when that package is installed, as importing
Lightning does, so code decorated with it at import time (Hydra templates do) runs once instead of raising."""
from fabric_kit.rank_zero import share_rank
from fabric_kit.utilities.rank_zero import rank_zero_info, rank_zero_only, rank_zero_warn

share_rank(load=True)

__all__ = ["rank_zero_info", "rank_zero_only", "rank_zero_warn"]
