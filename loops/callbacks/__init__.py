from loops.callbacks.callback import Callback
from loops.callbacks.checkpoint import Checkpoint

__all__ = ["Callback", "Checkpoint"]
