"""Quantized weights through bitsandbytes (QLoRA-style fine-tuning): `nn.Linear` layers become bitsandbytes
4-bit or 8-bit layers at setup; their weights are frozen and quantized, and the layers left out
(`ignore_modules`, e.g. adapters or a head) train as usual.

Unlike Lightning's plugin, which refuses anything but CUDA, the 4-bit modes also run on CPU with bitsandbytes' CPU
backend (the int8 modes stay CUDA-only: bitsandbytes does not quantize int8 weights on the CPU). bitsandbytes is an
optional dependency (`pip install 'fabric_kit[bitsandbytes]'`), imported when the plugin is built.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from fabric_kit.precision.dtype import TruePrecision

INSTALL_HINT = "pip install 'fabric_kit[bitsandbytes]'"
MODES = ("nf4", "nf4-dq", "fp4", "fp4-dq", "int8", "int8-training")


class BitsandbytesPrecision(TruePrecision):
    """Lightning's `BitsandbytesPrecision(mode, dtype, ignore_modules)`.

    `mode`: "nf4" / "fp4" (4-bit weights, `-dq` adds double quantization of the scales), "int8" (frozen 8-bit
    weights) or "int8-training" (8-bit matmuls with trainable 16/32-bit weights). `dtype` is the compute dtype of the
    quantized layers and of the rest of the model (default float32). `ignore_modules` names the submodules (by
    qualified name, or a prefix of one) whose Linear layers stay unquantized. Only layers of type `nn.Linear` itself are
    quantized (not subclasses, e.g. `nn.MultiheadAttention`'s output projection). Parameters, inputs and
    initialization take `dtype` as under the `-true` precisions.
    """

    def __init__(self, mode: str, dtype: torch.dtype | None = None, ignore_modules: Iterable[str] = ()) -> None:
        if mode not in MODES:
            raise ValueError(f"BitsandbytesPrecision mode={mode!r} is not supported; accepted: {', '.join(MODES)}")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as error:
            raise ImportError(f"BitsandbytesPrecision needs bitsandbytes: {INSTALL_HINT}") from error
        super().__init__(dtype or torch.float32, f"bitsandbytes-{mode}")
        self.mode = mode
        self.ignore_modules = tuple(ignore_modules)

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        module = super().convert_module(module)
        for name, child in list(module.named_modules()):
            # Exactly nn.Linear: subclasses such as MultiheadAttention's out_proj are used through their weight
            # tensor, which a quantized layer does not hold in a usable dtype.
            if type(child) is not torch.nn.Linear or self._ignored(name):
                continue
            if not name:
                raise ValueError("BitsandbytesPrecision converts the Linear layers inside a model, not a bare "
                                 "nn.Linear: wrap it in a module")
            parent_name, _, attribute = name.rpartition(".")
            parent = module.get_submodule(parent_name)
            setattr(parent, attribute, self._quantized(child))
        return module

    def convert_output(self, data: Any) -> Any:
        return data  # outputs stay in the compute dtype (the `-true` precisions return float32)

    def _ignored(self, name: str) -> bool:
        return any(name == ignored or name.startswith(f"{ignored}.") for ignored in self.ignore_modules)

    def _quantized(self, linear: torch.nn.Linear) -> torch.nn.Module:
        import bitsandbytes as bnb

        device = linear.weight.device
        weight = linear.weight.data
        layer: torch.nn.Module
        if self.mode.startswith("int8"):
            if device.type == "cpu":
                raise ValueError(f"BitsandbytesPrecision mode={self.mode!r} quantizes only on CUDA (bitsandbytes "
                                 f"keeps int8 weights unquantized on the CPU); on the CPU use one of "
                                 f"{', '.join(m for m in MODES if not m.startswith('int8'))}")
            trainable = self.mode == "int8-training"
            layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                        has_fp16_weights=trainable, threshold=6.0)
            layer.weight = bnb.nn.Int8Params(weight, requires_grad=trainable, has_fp16_weights=trainable)
        else:
            quant_type = self.mode.removesuffix("-dq")
            double = self.mode.endswith("-dq")
            layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                      compute_dtype=self.dtype, compress_statistics=double, quant_type=quant_type)
            layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, compress_statistics=double,
                                             quant_type=quant_type)
            layer.register_load_state_dict_pre_hook(_load_quantization_state)
        if linear.bias is not None:
            layer.bias = torch.nn.Parameter(linear.bias.data.to(self.dtype))
        # bitsandbytes quantizes a weight when it is moved to a device.
        return layer.to(device)


def _load_quantization_state(layer: torch.nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """Give a 4-bit layer the quantization state saved beside its packed weight (`weight.absmax`, ...), which
    bitsandbytes writes into a state dict but does not read back; the packed weight itself then loads as usual."""
    import bitsandbytes as bnb

    weight_key = f"{prefix}weight"
    stats = {key.removeprefix(f"{weight_key}."): state_dict.pop(key) for key in list(state_dict)
             if key.startswith(f"{weight_key}.")}
    if stats and weight_key in state_dict:
        layer.weight = bnb.nn.Params4bit.from_prequantized(state_dict[weight_key], stats, requires_grad=False,
                                                           device=layer.weight.device, module=layer)
