"""Export a LightningModule for serving without Python's training code: ONNX (`to_onnx`) and TorchScript
(`to_torchscript`). The example input goes through the module's batch-transfer hooks, as a batch would."""
from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from loops.core.module import LightningModule


def _example_input(module: Any, given: Any, what: str) -> Any:
    sample = module.example_input_array if given is None else given
    if sample is None:
        raise ValueError(f"{what} needs an example input: pass it, or set `self.example_input_array` in "
                         f"{type(module).__name__}.__init__")
    sample = module.on_before_batch_transfer(sample, 0)
    sample = module.transfer_batch_to_device(sample, module.device, 0)
    return module.on_after_batch_transfer(sample, 0)


def to_onnx(module: nn.Module, file_path: str | Path | io.BytesIO | None = None, input_sample: Any = None,
            **kwargs: Any) -> Any:
    """`torch.onnx.export(module, input_sample, file_path, **kwargs)` with the module in eval mode (its train /
    eval mode is restored afterwards); returns what torch returns (an ONNXProgram with the dynamo exporter)."""
    try:
        import onnx  # noqa: F401  (torch.onnx imports it lazily; fail here with the install line instead)
    except ImportError as missing:
        raise ModuleNotFoundError(f"{type(module).__name__}.to_onnx() needs onnx and onnxscript: "
                                  "pip install 'fabric_kit[onnx]'") from missing
    sample = _example_input(module, input_sample, f"{type(module).__name__}.to_onnx()")
    args = sample if isinstance(sample, tuple) else (sample,)
    mode = module.training
    module.eval()
    try:
        path = str(file_path) if isinstance(file_path, Path) else file_path
        return torch.onnx.export(module, args, path, **kwargs)  # type: ignore[arg-type]  # a BytesIO too
    finally:
        module.train(mode)


def to_torchscript(module: LightningModule, file_path: str | Path | None = None, method: str = "script",
                   example_inputs: Any = None, **kwargs: Any) -> torch.jit.ScriptModule:
    """Compile with `torch.jit.script` (method="script") or record a run with `torch.jit.trace` ("trace", which
    needs `example_inputs` or `example_input_array`), in eval mode; saved with `torch.jit.save` when `file_path`
    is given."""
    if method not in ("script", "trace"):
        raise ValueError(f"to_torchscript(method={method!r}) is not supported; accepted: 'script', 'trace'")
    mode = module.training
    module.eval()
    try:
        with torch.no_grad(), jit_reading(module):
            if method == "script":
                scripted = torch.jit.script(module, **kwargs)
            else:
                sample = _example_input(module, example_inputs, f"{type(module).__name__}.to_torchscript("
                                                                "method='trace')")
                scripted = torch.jit.trace(module, sample, **kwargs)
    finally:
        module.train(mode)
    if file_path is not None:
        torch.jit.save(scripted, str(file_path))
    return scripted


@contextmanager
def jit_reading(module: Any) -> Iterator[None]:
    """While torch.jit reads every attribute of `module` (scripting, tracing, TensorBoard's graph), a
    LightningModule's `trainer` is None instead of an error (there may be no Trainer)."""
    if not hasattr(type(module), "_jit_is_scripting"):  # not a LightningModule
        yield
        return
    module._jit_is_scripting = True
    try:
        yield
    finally:
        del module._jit_is_scripting
