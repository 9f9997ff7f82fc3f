from loops.callbacks.callback import Callback
from loops.callbacks.checkpoint import Checkpoint
from loops.callbacks.early_stopping import EarlyStopping
from loops.callbacks.model_checkpoint import ModelCheckpoint

__all__ = ["Callback", "Checkpoint", "EarlyStopping", "ModelCheckpoint"]
