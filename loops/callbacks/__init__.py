from loops.callbacks.callback import Callback
from loops.callbacks.batch_size_finder import BatchSizeFinder
from loops.callbacks.checkpoint import Checkpoint
from loops.callbacks.early_stopping import EarlyStopping
from loops.callbacks.lr_finder import LearningRateFinder
from loops.callbacks.model_checkpoint import ModelCheckpoint

__all__ = ["BatchSizeFinder", "Callback", "Checkpoint", "EarlyStopping", "LearningRateFinder", "ModelCheckpoint"]
