# What a Hydra template's utils do: decorate with rank_zero_only at import time and call it before any Trainer.
import lightning.pytorch  # noqa: F401
from lightning.pytorch.utilities import rank_zero_only
from lightning_utilities.core.rank_zero import rank_zero_only as utilities_rank_zero_only


@rank_zero_only
def log_once():
    print("@@ rank_zero_only ran")


@utilities_rank_zero_only
def log_once_too():
    print("@@ lightning_utilities' rank_zero_only ran")


log_once()
log_once_too()
print("@@ ranks", rank_zero_only.rank, utilities_rank_zero_only.rank)
