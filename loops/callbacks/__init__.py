from loops.callbacks.batch_size_finder import BatchSizeFinder
from loops.callbacks.callback import Callback
from loops.callbacks.checkpoint import Checkpoint
from loops.callbacks.device_stats_monitor import DeviceStatsMonitor
from loops.callbacks.early_stopping import EarlyStopping
from loops.callbacks.finetuning import BackboneFinetuning, BaseFinetuning
from loops.callbacks.gradient_accumulation_scheduler import GradientAccumulationScheduler
from loops.callbacks.lambda_function import LambdaCallback
from loops.callbacks.lr_finder import LearningRateFinder
from loops.callbacks.lr_monitor import LearningRateMonitor
from loops.callbacks.model_checkpoint import ModelCheckpoint
from loops.callbacks.model_summary import ModelSummary
from loops.callbacks.on_exception_checkpoint import OnExceptionCheckpoint
from loops.callbacks.prediction_writer import BasePredictionWriter
from loops.callbacks.progress import ProgressBar, RichProgressBar, TQDMProgressBar
from loops.callbacks.spike import SpikeDetection
from loops.callbacks.stochastic_weight_avg import StochasticWeightAveraging
from loops.callbacks.throughput_monitor import ThroughputMonitor
from loops.callbacks.timer import Timer
from loops.callbacks.weight_averaging import EMAWeightAveraging, WeightAveraging

__all__ = ["BackboneFinetuning", "BaseFinetuning", "BasePredictionWriter", "BatchSizeFinder", "Callback", "Checkpoint",
           "DeviceStatsMonitor", "EMAWeightAveraging", "EarlyStopping", "GradientAccumulationScheduler",
           "LambdaCallback", "LearningRateFinder", "LearningRateMonitor", "ModelCheckpoint", "ModelSummary",
           "OnExceptionCheckpoint", "ProgressBar", "RichProgressBar", "SpikeDetection", "StochasticWeightAveraging",
           "TQDMProgressBar", "ThroughputMonitor", "Timer", "WeightAveraging"]
