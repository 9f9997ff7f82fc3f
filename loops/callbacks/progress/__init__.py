from loops.callbacks.progress.progress_bar import ProgressBar
from loops.callbacks.progress.rich_progress import RichProgressBar
from loops.callbacks.progress.tqdm_progress import TQDMProgressBar

__all__ = ["ProgressBar", "RichProgressBar", "TQDMProgressBar"]
