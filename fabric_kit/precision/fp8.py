"""FP8 training through torchao's float8: the model's `nn.Linear` layers become `Float8Linear` at setup, so their
matmuls run in float8 with dynamic scaling while parameters, gradients and optimizer state stay in their dtype.

torchao is an optional dependency (`pip install 'fabric_kit[fp8]'`); it is imported when the plugin is built.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from fabric_kit.precision.precision import Precision

INSTALL_HINT = "pip install 'fabric_kit[fp8]'"


class Float8Precision(Precision):
    """FP8 matmuls for `nn.Linear` layers via `torchao.float8.convert_to_float8_training`.

    `module_filter_fn(module, fqn)` chooses which Linear layers are converted (torchao's own default converts every
    one); `enable_fsdp_float8_all_gather=True` makes FSDP2 all-gather the weights in float8 (torchao's option, used
    with `strategy="fsdp"` on torch versions where FSDP2 is the implementation). The converted model works under
    `torch.compile`, which fuses the casts. Pass it as `Fabric(plugins=Float8Precision())`.
    """

    precision = "fp8"

    def __init__(self, module_filter_fn: Callable[[torch.nn.Module, str], bool] | None = None,
                 enable_fsdp_float8_all_gather: bool = False) -> None:
        try:
            from torchao.float8 import Float8LinearConfig
        except ImportError as error:
            raise ImportError(f"Float8Precision needs torchao: {INSTALL_HINT}") from error
        self.config = Float8LinearConfig(enable_fsdp_float8_all_gather=enable_fsdp_float8_all_gather)
        self.module_filter_fn = module_filter_fn

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        from torchao.float8 import convert_to_float8_training

        # torchao swaps the Linear layers in place and returns the same module.
        convert_to_float8_training(module, config=self.config, module_filter_fn=self.module_filter_fn)
        return module
