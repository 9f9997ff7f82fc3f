"""Loading DeepSpeed checkpoints without running code stored in them.

DeepSpeed reads every file of a checkpoint (model states, ZeRO optimizer states, under every stage) through its
engine's `checkpoint_engine.load`, which its default engine implements as `torch.load(weights_only=False)`. The
engine installed here on every engine fabric_kit builds reads them with `torch.load(weights_only=True)` instead,
admitting, beyond tensors and plain containers, exactly the DeepSpeed types those files hold (found by listing
what the safe loader refused in checkpoints of stages 0 to 3, in float32 and bf16):

- `LossScaler`: the ZeRO optimizers store their loss scaler object itself (a static scale of 1 without fp16);
- `DynamicLossScaler`: the same object under fp16 with dynamic loss scaling;
- `ZeroStageEnum`: the stage the optimizer states were written by (an int enum);
- `fragment_address`: stages 1 and 2 record where each parameter lies in the flat partitions (a dataclass of
  two ints).

Each is rebuilt from its stored attributes without calling any of its methods. `weights_only=False` hands loading
back to DeepSpeed's own engine. Two ways DeepSpeed reads a checkpoint bypass its checkpoint engine and always
unpickle fully; `safe_loading` refuses them unless `weights_only=False`: a ZeRO stage 3 model loaded without its
optimizer (DeepSpeed rebuilds the weights with its zero_to_fp32 reader) and a universal checkpoint.

Imported only once DeepSpeed is (when a model is set up).
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from fabric_kit.checkpoint.errors import OPT_IN, UnsafeCheckpointError, weights_only_refusal

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine


def deepspeed_globals() -> list[Any]:
    """The DeepSpeed types a checkpoint file holds (see the module docstring for each)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


class SafeCheckpointEngine:
    """DeepSpeed's own checkpoint engine (`inner`, which still saves, commits and answers everything else) with a
    `load` that reads through the safe loader while `weights_only` is true."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.weights_only = True

    def load(self, path: str, map_location: Any = None) -> Any:
        if not self.weights_only:
            return self.inner.load(path, map_location=map_location)
        try:
            with torch.serialization.safe_globals(deepspeed_globals()):
                return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as error:
            raise UnsafeCheckpointError(path, "the safe loader refused it: it holds objects beyond tensors, plain "
                                              "containers and DeepSpeed's checkpoint types "
                                              f"({weights_only_refusal(error)}). {OPT_IN}") from error

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def install(engine: DeepSpeedEngine) -> None:
    """Make `engine` read its checkpoints through a `SafeCheckpointEngine`, once. DeepSpeed offers no config key
    or argument for a custom engine; its loading code (ZeRO optimizer states included) calls the engine's
    `checkpoint_engine` attribute, and the ZeRO optimizers keep none of their own."""
    if not isinstance(engine.checkpoint_engine, SafeCheckpointEngine):
        engine.checkpoint_engine = SafeCheckpointEngine(engine.checkpoint_engine)


@contextmanager
def safe_loading(engine: DeepSpeedEngine, path: str | os.PathLike[str], weights_only: bool,
                 loads_optimizer: bool) -> Iterator[None]:
    """Around `engine.load_checkpoint(path, ...)`: the installed engine reads with the safe loader unless
    `weights_only=False`; with the safe loader, the loads DeepSpeed does not route through its checkpoint engine
    are refused before anything is read."""
    if weights_only and not hasattr(torch.serialization, "safe_globals"):
        raise RuntimeError(f"reading DeepSpeed checkpoint {str(path)!r} with the safe loader needs torch>=2.5 "
                           f"(torch.serialization.safe_globals); this is torch {torch.__version__}. Upgrade torch, "
                           "or, for a checkpoint from a trusted source, pass weights_only=False")
    if weights_only:
        bypass = _full_unpickler_reader(engine, loads_optimizer)
        if bypass:
            raise UnsafeCheckpointError(path, f"{bypass}, which DeepSpeed reads only with the full unpickler (code "
                                              f"stored in the files would run). {OPT_IN}")
    install(engine)
    engine.checkpoint_engine.weights_only = weights_only
    try:
        yield
    finally:
        engine.checkpoint_engine.weights_only = True


def _full_unpickler_reader(engine: DeepSpeedEngine, loads_optimizer: bool) -> str:
    """Why `engine.load_checkpoint` would read files with its own full unpickler, or "" when it would not."""
    if engine.load_universal_checkpoint():
        return "the DeepSpeed config asks for a universal checkpoint (checkpoint.load_universal)"
    if engine.zero_optimization_partition_weights() and not loads_optimizer:
        return ("under ZeRO stage 3 a model loaded without its optimizer states is rebuilt by DeepSpeed's "
                "zero_to_fp32 reader; to load through the safe loader, set the model up with its optimizer and put "
                "both in the state, `fabric.load(path, {'model': model, 'optimizer': optimizer})`")
    return ""
