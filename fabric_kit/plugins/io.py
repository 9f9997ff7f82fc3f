"""CheckpointIO plugins at Lightning's `lightning.fabric.plugins.io`; `fabric_kit.checkpoint.checkpoint_io` defines
them. `Fabric(plugins=[MyCheckpointIO()])` makes the strategy write and read its checkpoint files through it.
`AsyncCheckpointIO` is Lightning's Trainer plugin (`lightning.pytorch.plugins.io`), here for Fabric too.
`XLACheckpointIO` imports torch_xla only when constructed."""
from fabric_kit.checkpoint.checkpoint_io import AsyncCheckpointIO, CheckpointIO, TorchCheckpointIO, XLACheckpointIO

__all__ = ["AsyncCheckpointIO", "CheckpointIO", "TorchCheckpointIO", "XLACheckpointIO"]
