from loops.callbacks.callback import Callback
from loops.callbacks.checkpoint import Checkpoint
from loops.callbacks.early_stopping import EarlyStopping
from loops.callbacks.model_checkpoint import ModelCheckpoint
from loops.callbacks.model_summary import ModelSummary
from loops.callbacks.progress import ProgressBar, RichProgressBar, TQDMProgressBar

__all__ = ["Callback", "Checkpoint", "EarlyStopping", "ModelCheckpoint", "ModelSummary", "ProgressBar",
           "RichProgressBar", "TQDMProgressBar"]
