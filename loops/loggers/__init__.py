"""Lightning's loggers for the loops Trainer: fabric_kit's TensorBoard and CSV loggers (with the Trainer loggers'
`root_dir`), plus Weights & Biases and MLflow, whose packages are imported only when such a logger is built."""
from fabric_kit.loggers import Logger
from loops.loggers.csv_logs import CSVLogger
from loops.loggers.mlflow import MLFlowLogger
from loops.loggers.tensorboard import TensorBoardLogger
from loops.loggers.wandb import WandbLogger

__all__ = ["CSVLogger", "Logger", "MLFlowLogger", "TensorBoardLogger", "WandbLogger"]
