"""Quantized weights through bitsandbytes (QLoRA-style fine-tuning): `nn.Linear` layers become bitsandbytes
4-bit or 8-bit layers at setup; their weights are frozen and quantized, and the layers left out
(`ignore_modules`, e.g. adapters or a head) train as usual.

A model created under `fabric.init_module(empty_init=True)` is built on the meta device and gets its storage at
setup one layer at a time, each Linear layer quantized as soon as its weights exist, so the full-precision weights
of the whole model are never held at once. A 4-bit layer loads full-precision weights (a pretrained checkpoint) by
quantizing them, and its own checkpoints back with their quantization state.

Unlike Lightning's plugin, which refuses anything but CUDA, every mode also runs on the CPU with bitsandbytes' CPU
backend (a bitsandbytes that leaves int8 weights unquantized on the CPU is refused with an error). bitsandbytes is
an optional dependency (`pip install 'fabric_kit[bitsandbytes]'`), imported when the plugin is built.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from fabric_kit.empty_init import check_materializable, has_meta_tensors, owns_meta_tensors
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

    Under `fabric.init_module(empty_init=True)` the model is created on the meta device and `setup` materializes it
    on the CPU layer by layer (each module's `reset_parameters()`), quantizing each Linear layer before the next
    one gets storage; the quantized model then moves to the device.
    """

    materializes_meta_modules = True

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
        on_meta = has_meta_tensors(module)
        if on_meta:
            check_materializable(module)
        else:
            module = super().convert_module(module)
        # By name, one layer at a time: a list of the modules would keep every replaced layer's weights alive.
        for name in [name for name, _ in module.named_modules()]:
            child = module.get_submodule(name)
            if on_meta and owns_meta_tensors(child):
                self._materialize(child)
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

    def _materialize(self, module: torch.nn.Module) -> None:
        """Storage on the CPU, in `dtype`, for the meta tensors `module` holds itself, initialised by its
        `reset_parameters()` (children are materialized on their own turn)."""
        module.to_empty(device="cpu", recurse=False)
        with torch.no_grad():
            module.reset_parameters()  # type: ignore[operator]  # checked by check_materializable
        for tensor in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
            if tensor.is_floating_point():
                tensor.data = tensor.data.to(self.dtype)

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
            trainable = self.mode == "int8-training"
            layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                        has_fp16_weights=trainable, threshold=6.0)
            layer.weight = bnb.nn.Int8Params(weight, requires_grad=trainable, has_fp16_weights=trainable)
            layer.register_load_state_dict_pre_hook(_give_back_int8_scales)
            if trainable:  # its backward transposes the input as a matrix: feed it (batch * tokens, features)
                layer.register_forward_pre_hook(_as_matrix)
                layer.register_forward_hook(_with_leading_dimensions)
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
        layer = layer.to(device)
        if self.mode == "int8" and layer.weight.dtype != torch.int8:
            four_bit = ", ".join(m for m in MODES if not m.startswith("int8"))
            raise ValueError(f"BitsandbytesPrecision mode='int8': bitsandbytes {bnb.__version__} leaves the weights "
                             f"unquantized on {device.type!r}; use one of {four_bit} there, or a newer bitsandbytes")
        return layer


def _as_matrix(layer: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Before an int8-training layer's forward: an input of more than two dimensions (batch, tokens, features)
    goes in as a matrix, its leading dimensions kept for `_with_leading_dimensions`."""
    x = args[0]
    layer._leading_dimensions = x.shape[:-1]
    return (x.reshape(-1, x.shape[-1]), *args[1:]) if x.dim() > 2 else args


def _with_leading_dimensions(layer: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
    """After it: the output gets the input's leading dimensions back."""
    return output.reshape(*layer._leading_dimensions, output.shape[-1])  # type: ignore[misc]


def _load_quantization_state(layer: torch.nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """Before a 4-bit layer loads `state_dict`: a full-precision weight (a pretrained checkpoint) is quantized into
    the layer; a packed one gets the quantization state saved beside it (`weight.absmax`, ...), which bitsandbytes
    writes into a state dict but does not read back. Either way the packed weight then loads as usual."""
    import bitsandbytes as bnb

    weight_key = f"{prefix}weight"
    stats = {key.removeprefix(f"{weight_key}."): state_dict.pop(key) for key in list(state_dict)
             if key.startswith(f"{weight_key}.")}
    weight = state_dict.get(weight_key)
    if weight is None:
        return
    current: Any = layer.weight  # a bitsandbytes Params4bit
    if weight.is_floating_point():
        layer.weight = bnb.nn.Params4bit(weight.detach().to(current.device), requires_grad=False,
                                         blocksize=current.blocksize, compress_statistics=current.compress_statistics,
                                         quant_type=current.quant_type, quant_storage=current.quant_storage,
                                         module=layer).to(current.device)
        state_dict[weight_key] = layer.weight.data
    elif stats:
        layer.weight = bnb.nn.Params4bit.from_prequantized(weight, stats, requires_grad=False,
                                                           device=current.device, module=layer)


def _give_back_int8_scales(layer: torch.nn.Module, *_: Any) -> None:
    """Before an 8-bit layer loads a state dict: its first forward moved the weight's row scales (`SCB`) into the
    layer's matmul state, where bitsandbytes' loading does not look (it refuses the checkpoint as if the layer were
    unquantized); the weight gets them back, the same tensor, which loading then overwrites in place."""
    weight: Any = layer.weight  # a bitsandbytes Int8Params
    state: Any = layer.state
    if getattr(weight, "SCB", None) is None and state.SCB is not None:
        weight.SCB = state.SCB
