"""BitsandbytesPrecision beyond the shared low-precision matrix: a model created under `init_module(empty_init=True)`
is built on the meta device and quantized layer by layer at setup (peak bytes counted, so the full-precision model
never exists at once), QLoRA-style fine-tuning of LoRA adapters over a frozen 4-bit base, pretrained full-precision
weights quantized on load, and the Lightning plugin's constructor, which runs here where Lightning's refuses the CPU."""
import inspect
import math
import weakref

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from fabric_kit import Fabric

pytestmark = pytest.mark.usefixtures("clean_env")
bnb = pytest.importorskip("bitsandbytes")
from fabric_kit.plugins import BitsandbytesPrecision  # noqa: E402  # needs bitsandbytes

WIDTH, DEPTH = 256, 12
LAYER_BYTES = WIDTH * WIDTH * 4  # one float32 weight


class PeakBytes(TorchDispatchMode):
    """Counts the bytes of every tensor storage that torch ops create off the meta device, from creation until it
    is freed (CPython frees it as its last reference goes): `peak` is the most alive at once, deterministically."""

    def __init__(self):
        super().__init__()
        self.live, self.now, self.peak = {}, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and not tensor.is_meta:
                storage = tensor.untyped_storage()
                key = storage.data_ptr()
                if key not in self.live and storage.nbytes():
                    self.live[key] = storage.nbytes()
                    self.now += storage.nbytes()
                    self.peak = max(self.peak, self.now)
                    weakref.finalize(storage, self._free, key)
        return out

    def _free(self, key):
        self.now -= self.live.pop(key)


class LoRALinear(nn.Module):
    """A Linear layer (quantized by the plugin) plus a trainable low-rank update `x A^T B^T`, B starting at zero."""

    def __init__(self, width, rank=4):
        super().__init__()
        self.base = nn.Linear(width, width)
        self.lora_a = nn.Parameter(torch.empty(rank, width))
        self.lora_b = nn.Parameter(torch.empty(width, rank))
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b)

    def forward(self, x):
        return self.base(x) + x @ self.lora_a.T @ self.lora_b.T


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(*[LoRALinear(WIDTH) for _ in range(DEPTH)])
        self.norm = nn.LayerNorm(WIDTH)

    def forward(self, x):
        return self.norm(self.layers(x))


def quantized_model(empty_init, mode="nf4"):
    fabric = Fabric(accelerator="cpu", devices=1, plugins=BitsandbytesPrecision(mode))
    with PeakBytes() as counter:
        with fabric.init_module(empty_init=empty_init):
            model = Net()
        model = fabric.setup_module(model)
    return fabric, model, counter


def test_empty_init_builds_on_meta_and_quantizes_layer_by_layer():
    torch.manual_seed(0)
    fabric, model, counter = quantized_model(empty_init=True)
    assert all(type(layer.base) is bnb.nn.Linear4bit for layer in model.layers)
    assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))
    # What is left is the 4-bit model; on the way, at most a few float32 layers were alive at once.
    assert counter.now < DEPTH * LAYER_BYTES / 4
    assert counter.peak - counter.now < 3 * LAYER_BYTES, (counter.peak, counter.now)
    # The meta-device layers were initialised (by reset_parameters), not left as uninitialised memory.
    assert all(layer.lora_a.abs().sum() > 0 and layer.lora_b.abs().sum() == 0 for layer in model.layers)
    # Without empty_init the whole float32 model exists before it is quantized: the count can tell.
    _, _, eager = quantized_model(empty_init=False)
    assert eager.peak >= DEPTH * LAYER_BYTES


def test_a_module_without_reset_parameters_on_meta_is_refused():
    class Bare(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(4))
            self.linear = nn.Linear(4, 4)

    fabric = Fabric(accelerator="cpu", devices=1, plugins=BitsandbytesPrecision("nf4"))
    with fabric.init_module(empty_init=True):
        model = Bare()
    with pytest.raises(TypeError, match=r"\['Bare'\] were created on the meta device.*no `reset_parameters\(\)`"):
        fabric.setup_module(model)


@pytest.mark.parametrize("mode", ["nf4-dq", "fp4", "int8"])
def test_qlora_trains_the_adapters_over_a_frozen_quantized_base_and_round_trips(mode, tmp_path):
    torch.manual_seed(0)
    fabric, model, _ = quantized_model(empty_init=True, mode=mode)
    adapters = [p for name, p in model.named_parameters() if "lora_" in name]
    assert not any(layer.base.weight.requires_grad for layer in model.layers) and len(adapters) == 2 * DEPTH
    optimizer = fabric.setup_optimizers(torch.optim.Adam(adapters, lr=1e-2))
    x = torch.randn(32, WIDTH, generator=torch.Generator().manual_seed(0))
    target = x.roll(1, dims=1)
    frozen = {name: t.clone() for name, t in model.state_dict().items() if ".base." in name}
    losses = []
    for _ in range(15):
        loss = nn.functional.mse_loss(model(x), target)
        optimizer.zero_grad()
        fabric.backward(loss)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses
    for name, tensor in model.state_dict().items():
        if name in frozen:
            assert torch.equal(tensor, frozen[name]), name  # the quantized base did not move
    fabric.save(tmp_path / "qlora.ckpt", {"model": model, "optimizer": optimizer})
    expected = model(x).detach()
    torch.manual_seed(1)
    _, fresh, _ = quantized_model(empty_init=True, mode=mode)
    optimizer = torch.optim.Adam([p for name, p in fresh.named_parameters() if "lora_" in name], lr=1e-2)
    assert not torch.allclose(fresh(x), expected)
    fabric.load(tmp_path / "qlora.ckpt", {"model": fresh, "optimizer": optimizer})
    torch.testing.assert_close(fresh(x), expected, rtol=0, atol=0)


def test_full_precision_weights_are_quantized_on_load():
    torch.manual_seed(0)
    pretrained = Net()
    _, model, _ = quantized_model(empty_init=True, mode="nf4")
    x = torch.randn(8, WIDTH)
    model.load_state_dict(pretrained.state_dict())
    assert all(type(layer.base) is bnb.nn.Linear4bit and layer.base.weight.dtype == torch.uint8
               for layer in model.layers)
    error = (model(x) - pretrained(x)).abs().max()
    assert error < 0.25 * pretrained(x).abs().max()  # 4-bit rounding of the pretrained weights, nothing more
    torch.manual_seed(1)
    assert error < (Net()(x) - pretrained(x)).abs().max() / 4  # ... far closer than another initialisation


def test_the_constructor_is_lightnings_and_runs_where_lightnings_refuses_the_cpu():
    lightning = pytest.importorskip("lightning.fabric")
    theirs = lightning.plugins.BitsandbytesPrecision
    assert (list(inspect.signature(BitsandbytesPrecision).parameters) == list(inspect.signature(theirs).parameters)
            == ["mode", "dtype", "ignore_modules"])
    arguments = {"mode": "int8-training", "dtype": torch.float16, "ignore_modules": {"head"}}
    with pytest.raises(RuntimeError, match="only supported on CUDA"):
        lightning.Fabric(accelerator="cpu", devices=1, plugins=theirs(**arguments))
    fabric = Fabric(accelerator="cpu", devices=1, plugins=BitsandbytesPrecision(**arguments))
    model = fabric.setup_module(nn.Sequential(nn.Linear(16, 16), nn.ReLU()))
    assert type(model.module[0]) is bnb.nn.Linear8bitLt and model(torch.randn(2, 16)).dtype == torch.float16


def test_an_int8_layer_left_unquantized_by_bitsandbytes_is_refused(monkeypatch):
    # As bitsandbytes releases without int8 on the CPU do: moving the weight to the device leaves it in float.
    monkeypatch.setattr(bnb.nn.Int8Params, "_quantize", lambda self, device: self)
    fabric = Fabric(accelerator="cpu", devices=1, plugins=BitsandbytesPrecision("int8"))
    with pytest.raises(ValueError, match=r"mode='int8': bitsandbytes .* leaves the weights unquantized on 'cpu'; "
                                         r"use one of nf4, nf4-dq, fp4, fp4-dq there"):
        fabric.setup_module(nn.Sequential(nn.Linear(16, 16)))
