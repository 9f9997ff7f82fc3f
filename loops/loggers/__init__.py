"""Lightning's loggers for the loops Trainer: fabric_kit's TensorBoard and CSV loggers, plus Weights & Biases and
MLflow, whose packages are imported only when such a logger is built."""
from fabric_kit.loggers import CSVLogger, Logger, TensorBoardLogger
from loops.loggers.mlflow import MLFlowLogger
from loops.loggers.wandb import WandbLogger

__all__ = ["CSVLogger", "Logger", "MLFlowLogger", "TensorBoardLogger", "WandbLogger"]
