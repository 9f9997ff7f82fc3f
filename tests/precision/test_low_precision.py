"""FP8 (torchao float8) and bitsandbytes quantized weights train on the CPU: an MLP and a tiny transformer, the loss
falling over a few steps, checkpoints round-tripping, and a Lightning script porting by its import line."""
import importlib
import sys

import pytest
import torch
from torch import nn

from fabric_kit import Fabric
from fabric_kit.plugins import BitsandbytesPrecision
from fabric_kit.plugins.precision import Float8Precision

pytestmark = pytest.mark.usefixtures("clean_env")
pytest.importorskip("torchao")
pytest.importorskip("bitsandbytes")


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(64, 16)

    def forward(self, x):
        return self.head(self.body(x))


class TinyTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(64, 32)
        self.block = nn.TransformerEncoderLayer(32, 2, dim_feedforward=64, dropout=0.0, batch_first=True)
        self.head = nn.Linear(32, 64)

    def forward(self, tokens):
        return self.head(self.block(self.embed(tokens)))


def batches(kind):
    generator = torch.Generator().manual_seed(0)
    if kind == "mlp":
        x = torch.randn(16, 32, generator=generator)
        return x, x[:, :16] * 2
    tokens = torch.randint(0, 64, (8, 16), generator=generator)
    return tokens, tokens.roll(1, dims=1)


def loss_of(kind, output, target):
    if kind == "mlp":
        return nn.functional.mse_loss(output, target)
    return nn.functional.cross_entropy(output.flatten(0, 1), target.flatten())


def train(plugin, kind, steps=25, lr=1e-2):
    torch.manual_seed(0)
    fabric = Fabric(accelerator="cpu", devices=1, plugins=plugin)
    model = MLP() if kind == "mlp" else TinyTransformer()
    trainable = model.parameters() if isinstance(plugin, Float8Precision) else model.head.parameters()
    optimizer = torch.optim.Adam(trainable, lr=lr)
    model, optimizer = fabric.setup(model, optimizer)
    inputs, target = batches(kind)
    losses = []
    for _ in range(steps):
        loss = loss_of(kind, model(inputs), target)
        optimizer.zero_grad()
        fabric.backward(loss)
        optimizer.step()
        losses.append(loss.item())
    return fabric, model, optimizer, losses


def fp8():
    return Float8Precision()


def qlora(mode):
    return lambda: BitsandbytesPrecision(mode, ignore_modules={"head"})


MODES = ("nf4", "nf4-dq", "fp4", "fp4-dq", "int8", "int8-training")
PLUGINS = {"fp8": fp8, **{mode: qlora(mode) for mode in MODES}}


CASES = [(plugin, kind) for plugin in sorted(PLUGINS) for kind in ("mlp", "transformer")]


@pytest.mark.parametrize(("plugin", "kind"), CASES)
def test_the_loss_falls_and_a_checkpoint_round_trips(plugin, kind, tmp_path):
    fabric, model, optimizer, losses = train(PLUGINS[plugin](), kind)
    assert losses[-1] < 0.8 * losses[0], losses
    fabric.save(tmp_path / "ckpt.pt", {"model": model, "optimizer": optimizer})
    saved = {name: tensor.clone() for name, tensor in model.state_dict().items() if tensor.is_floating_point()}
    with torch.no_grad():
        model.head.weight.add_(1.0)
    fabric.load(tmp_path / "ckpt.pt", {"model": model, "optimizer": optimizer})
    for name, tensor in model.state_dict().items():
        if name in saved:
            torch.testing.assert_close(tensor, saved[name], rtol=0, atol=0, msg=name)


def test_fp8_converts_the_linear_layers_and_bitsandbytes_quantizes_all_but_the_ignored():
    from bitsandbytes.nn import Linear4bit
    from torchao.float8.float8_linear import Float8Linear

    _, model, _, _ = train(Float8Precision(), "mlp", steps=1)
    assert sum(isinstance(m, Float8Linear) for m in model.modules()) == 3
    _, model, _, _ = train(BitsandbytesPrecision("nf4", ignore_modules={"head"}), "mlp", steps=1)
    assert sum(isinstance(m, Linear4bit) for m in model.modules()) == 2
    assert type(model.head) is nn.Linear and model.head.weight.requires_grad
    assert not any(m.weight.requires_grad for m in model.modules() if isinstance(m, Linear4bit))


def test_the_fp8_setting_is_the_float8_plugin_for_fabric_and_the_trainer():
    from torchao.float8.float8_linear import Float8Linear

    import loops as L

    fabric = Fabric(accelerator="cpu", devices=1, precision="fp8")
    assert isinstance(fabric.strategy.precision, Float8Precision)
    model = fabric.setup_module(nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16)))
    assert sum(isinstance(m, Float8Linear) for m in model.modules()) == 2
    assert isinstance(L.Trainer(accelerator="cpu", devices=1, precision="fp8", logger=False).strategy.precision,
                      Float8Precision)
    with pytest.raises(ValueError, match=r"precision='fp16' is not supported; accepted: .*bf16-true, fp8"):
        Fabric(accelerator="cpu", devices=1, precision="fp16")


def test_a_lightning_script_ports_by_its_import_line():
    script = ("from lightning.fabric.plugins import BitsandbytesPrecision\n"
              "plugin = BitsandbytesPrecision(mode='nf4-dq', dtype=torch.float32)\n")
    namespace = {"torch": torch}
    exec(script.replace("lightning.fabric", "fabric_kit"), namespace)  # noqa: S102
    assert isinstance(namespace["plugin"], BitsandbytesPrecision) and namespace["plugin"].mode == "nf4-dq"


def test_bad_mode_and_missing_packages_are_clear_errors(monkeypatch):
    with pytest.raises(ValueError, match=r"mode='nf8' is not supported; accepted: nf4, nf4-dq"):
        BitsandbytesPrecision("nf8")
    for name in [name for name in sys.modules if name.split(".")[0] in ("bitsandbytes", "torchao")]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed: importing them raises ImportError
    with pytest.raises(ImportError, match=r"needs bitsandbytes: pip install 'fabric_kit\[bitsandbytes\]'"):
        BitsandbytesPrecision("nf4")
    with pytest.raises(ImportError, match=r"Float8Precision needs torchao: pip install 'fabric_kit\[fp8\]'"):
        Float8Precision()
    with pytest.raises(ImportError, match=r"fabric_kit\[fp8\]"):
        Fabric(accelerator="cpu", devices=1, precision="fp8")
    assert importlib.import_module("fabric_kit.precision.fp8")
