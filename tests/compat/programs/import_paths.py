# Imports a program reaches for at Lightning's documented paths, and a fact about each, printed.
import torch
from lightning import Fabric, LightningModule
from lightning.fabric.accelerators import ACCELERATOR_REGISTRY, Accelerator, TPUAccelerator, find_usable_cuda_devices
from lightning.fabric.plugins import ClusterEnvironment, DeepSpeedPrecision, MixedPrecision, Precision, XLAPrecision
from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment, TorchElasticEnvironment
from lightning.fabric.strategies import (
    STRATEGY_REGISTRY,
    DDPStrategy,
    DeepSpeedStrategy,
    FSDPStrategy,
    SingleDeviceStrategy,
    SingleDeviceXLAStrategy,
    Strategy,
    XLAFSDPStrategy,
    XLAStrategy,
)
from lightning.fabric.utilities import (
    AttributeDict,
    rank_zero_info,
    rank_zero_only,
    rank_zero_warn,
    suggested_max_num_workers,
)
from lightning.fabric.utilities.apply_func import convert_tensors_to_scalars, move_data_to_device
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.data import has_len
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.fabric.utilities.rank_zero import rank_zero_only as fabric_rank_zero_only
from lightning.fabric.utilities.seed import seed_everything
from lightning.pytorch import cli_lightning_logo
from lightning.pytorch.callbacks.early_stopping import EarlyStopping
from lightning.pytorch.callbacks.lr_monitor import LearningRateMonitor
from lightning.pytorch.callbacks.model_checkpoint import ModelCheckpoint
from lightning.pytorch.callbacks.progress import TQDMProgressBar
from lightning.pytorch.demos import BoringDataModule, BoringModel, DemoModel, Transformer, WikiText2
from lightning.pytorch.demos.boring_classes import RandomDataset
from lightning.pytorch.demos.mnist_datamodule import MNIST, MNISTDataModule
from lightning.pytorch.loggers.csv_logs import CSVLogger
from lightning.pytorch.loggers.tensorboard import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only as trainer_rank_zero_only
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader

print("@@ strategies", all(issubclass(cls, Strategy) for cls in (DDPStrategy, DeepSpeedStrategy, FSDPStrategy,
                                                                 SingleDeviceStrategy, SingleDeviceXLAStrategy,
                                                                 XLAFSDPStrategy, XLAStrategy)))
print("@@ registry", isinstance(STRATEGY_REGISTRY.get("ddp"), DDPStrategy),
      "ddp_spawn" in STRATEGY_REGISTRY.available_strategies(), "cpu" in ACCELERATOR_REGISTRY.available_accelerators())
print("@@ accelerators", issubclass(TPUAccelerator, Accelerator), find_usable_cuda_devices(0))
print("@@ plugins", all(issubclass(cls, Precision) for cls in (DeepSpeedPrecision, MixedPrecision, XLAPrecision)),
      all(issubclass(cls, ClusterEnvironment) for cls in (LightningEnvironment, SLURMEnvironment,
                                                         TorchElasticEnvironment)))
print("@@ rank_zero", fabric_rank_zero_only is rank_zero_only, trainer_rank_zero_only.rank, callable(rank_zero_info),
      callable(rank_zero_warn), callable(seed_everything))
print("@@ attribute_dict", repr(AttributeDict(lr=0.1, batch_size=4)).replace("\n", " | "))
print("@@ data", has_len(DataLoader(range(3))), suggested_max_num_workers(1) >= 1,
      list(DistributedSamplerWrapper(range(6), num_replicas=2, rank=1, shuffle=False)))
print("@@ apply_func", convert_tensors_to_scalars({"a": torch.tensor(2.5)}),
      move_data_to_device([torch.ones(1)], torch.device("cpu"))[0].device.type)
print("@@ cloud_io", type(get_filesystem("memory://compat/file")).__name__)
print("@@ callbacks", all(callable(c) for c in (EarlyStopping, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar)),
      all(callable(c) for c in (CSVLogger, TensorBoardLogger, cli_lightning_logo)))
print("@@ namespace", issubclass(BoringModel, LightningModule), callable(Fabric.setup))
print("@@ demos", is_overridden("training_step", BoringModel()), tuple(BoringModel().layer.weight.shape),
      Transformer(vocab_size=10, ninp=4, nhead=2, nhid=4, nlayers=1).decoder.out_features, len(RandomDataset(32, 5)),
      all(callable(c) for c in (BoringDataModule, DemoModel, WikiText2, MNIST, MNISTDataModule)))
