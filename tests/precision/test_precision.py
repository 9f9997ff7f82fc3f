"""Every precision setting trains on the CPU, with parameters and computation in the expected dtypes.

On the CPU, torch 2.13 runs fp16 autocast and has a GradScaler for the "cpu" device, so 16-mixed is tested for real.
"""
import pytest
import torch
from torch import nn

from fabric_kit import Fabric
from fabric_kit.precision import normalize_precision

pytestmark = pytest.mark.usefixtures("clean_env")

# (precision argument, normalised name, parameter dtype, dtype of the computation inside forward)
SETTINGS = [
    ("32-true", "32-true", torch.float32, torch.float32),
    ("32", "32-true", torch.float32, torch.float32),
    (32, "32-true", torch.float32, torch.float32),
    ("64-true", "64-true", torch.float64, torch.float64),
    ("64", "64-true", torch.float64, torch.float64),
    (64, "64-true", torch.float64, torch.float64),
    ("16-mixed", "16-mixed", torch.float32, torch.float16),
    ("16", "16-mixed", torch.float32, torch.float16),
    (16, "16-mixed", torch.float32, torch.float16),
    ("bf16-mixed", "bf16-mixed", torch.float32, torch.bfloat16),
    ("bf16", "bf16-mixed", torch.float32, torch.bfloat16),
    ("16-true", "16-true", torch.float16, torch.float16),
    ("bf16-true", "bf16-true", torch.bfloat16, torch.bfloat16),
]


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.head = nn.Linear(4 * 6 * 6, 3)
        self.seen_dtypes = []

    def forward(self, x):
        hidden = self.head(torch.relu(self.conv(x)).flatten(1))
        self.seen_dtypes.append(hidden.dtype)
        return hidden


def setup(precision, lr=0.1):
    fabric = Fabric(accelerator="cpu", devices=1, precision=precision)
    torch.manual_seed(0)
    net = ConvNet()
    model, optimizer = fabric.setup(net, torch.optim.SGD(net.parameters(), lr=lr))
    return fabric, net, model, optimizer


def batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(4, 1, 8, 8, generator=generator), torch.randint(0, 3, (4,), generator=generator)


@pytest.mark.parametrize(("precision", "name", "param_dtype", "compute_dtype"), SETTINGS)
def test_training_steps(precision, name, param_dtype, compute_dtype):
    fabric, net, model, optimizer = setup(precision)
    assert fabric.strategy.precision.precision == name == normalize_precision(precision)
    initial = [p.detach().clone() for p in net.parameters()]
    for step in range(3):
        x, y = batch(step)
        output = model(x)
        assert output.dtype == torch.float32  # outputs come back in float32 for the loss code
        loss = nn.functional.cross_entropy(output, y)
        optimizer.zero_grad()
        fabric.backward(loss)
        optimizer.step()
    assert net.seen_dtypes == [compute_dtype] * 3
    for before, parameter in zip(initial, net.parameters(), strict=False):
        assert parameter.dtype == param_dtype
        assert parameter.grad.dtype == param_dtype
        assert not torch.equal(before, parameter.detach())  # every step changed the weights
    assert torch.get_default_dtype() == torch.float32  # nothing leaked out of the forward context


@pytest.mark.parametrize(("precision", "has_scaler"), [("16-mixed", True), ("bf16-mixed", False),
                                                       ("32-true", False), ("16-true", False)])
def test_grad_scaler_state(precision, has_scaler):
    fabric, *_ = setup(precision)
    state = fabric.strategy.precision.state_dict()
    if has_scaler:
        assert set(state) == {"scaler"} and state["scaler"]["scale"] == 2.0**16
    else:
        assert state == {}


def test_grad_scaler_scales_the_loss_and_unscales_before_clipping():
    reference_fabric, reference_net, reference_model, _ = setup("32-true")
    fabric, net, model, optimizer = setup("16-mixed")
    x, y = batch()
    fabric.backward(nn.functional.cross_entropy(model(x), y))
    reference_fabric.backward(nn.functional.cross_entropy(reference_model(x), y))
    scale = fabric.strategy.precision.scaler.get_scale()
    reference_norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in reference_net.parameters()]))
    raw_norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in net.parameters()]))
    torch.testing.assert_close(raw_norm / scale, reference_norm, rtol=1e-2, atol=0)  # gradients are scaled ...
    norm = fabric.clip_gradients(model, optimizer, max_norm=1e6)
    torch.testing.assert_close(norm, reference_norm, rtol=1e-2, atol=0)  # ... and unscaled before clipping
    optimizer.step()  # the scaler knows the gradients are unscaled already


def test_grad_scaler_skips_steps_with_infinite_gradients():
    fabric, net, model, optimizer = setup("16-mixed")
    before = [p.detach().clone() for p in net.parameters()]
    x, _ = batch()
    fabric.backward(model(x).sum() * float("inf"))
    optimizer.step()
    assert all(torch.equal(b, p) for b, p in zip(before, net.parameters(), strict=False))
    assert fabric.strategy.precision.state_dict()["scaler"]["scale"] == 2.0**15


def test_grad_scaler_state_travels_in_checkpoints(tmp_path):
    fabric, net, model, optimizer = setup("16-mixed")
    x, _ = batch()
    fabric.backward(model(x).sum() * float("inf"))
    optimizer.step()  # skipped; the loss scale halves
    assert fabric.strategy.precision.state_dict()["scaler"]["scale"] == 2.0**15
    fabric.save(tmp_path / "checkpoint.pt", {"model": model, "optimizer": optimizer})
    restored, _, restored_model, restored_optimizer = setup("16-mixed")
    restored.load(tmp_path / "checkpoint.pt", {"model": restored_model, "optimizer": restored_optimizer})
    assert restored.strategy.precision.state_dict()["scaler"]["scale"] == 2.0**15


def test_16_mixed_needs_fabric_backward():
    fabric, net, model, optimizer = setup("16-mixed")
    x, y = batch()
    nn.functional.cross_entropy(model(x), y).backward()  # bypasses the loss scaling
    with pytest.raises(RuntimeError, match=r"precision='16-mixed' scales the loss: call `fabric.backward\(loss\)` "
                                           r"instead of `loss.backward\(\)`"):
        optimizer.step()


def test_bf16_mixed_accepts_plain_backward():
    fabric, net, model, optimizer = setup("bf16-mixed")
    before = net.head.weight.detach().clone()
    x, y = batch()
    nn.functional.cross_entropy(model(x), y).backward()  # no loss scaling with bf16
    optimizer.step()
    assert not torch.equal(before, net.head.weight)


@pytest.mark.parametrize("precision", ["16-true", "bf16-true", "64-true"])
def test_true_precision_converts_every_floating_input(precision):
    fabric, net, model, _ = setup(precision)
    x, y = batch()
    inputs = {"float64": x.double(), "float16": x.half(), "float32": x}
    outputs = {name: model(tensor) for name, tensor in inputs.items()}  # e.g. a float64 batch built from numpy
    assert {output.dtype for output in outputs.values()} == {torch.float32}
    torch.testing.assert_close(outputs["float64"], outputs["float32"])
    labels = {"labels": y, "images": x.double()}
    converted = fabric.strategy.precision.convert_input(labels)
    assert converted["labels"] is y and converted["images"].dtype == net.head.weight.dtype


class Complex(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([1.0 + 2.0j]))
        self.register_buffer("phase", torch.tensor([3.0 - 4.0j]))
        self.scale = nn.Parameter(torch.tensor([1.0]))


@pytest.mark.parametrize(("precision", "dtype"), [("64-true", torch.float64), ("16-true", torch.float16),
                                                  ("bf16-true", torch.bfloat16)])
def test_true_precisions_leave_complex_tensors_alone(precision, dtype):
    net = Complex()
    Fabric(accelerator="cpu", devices=1, precision=precision).setup(net)
    assert torch.equal(net.weight.detach(), torch.tensor([1.0 + 2.0j]))  # the imaginary part survives
    assert torch.equal(net.phase, torch.tensor([3.0 - 4.0j]))
    assert net.scale.dtype == dtype  # real floating tensors take the precision's dtype


@pytest.mark.parametrize(("precision", "dtype"), [("16-mixed", torch.float16), ("bf16-mixed", torch.bfloat16)])
def test_mixed_precision_casts_floating_inputs_to_the_autocast_dtype(precision, dtype):
    seen = []

    class Probe(nn.Module):
        def forward(self, x, labels):
            seen.append((x.dtype, labels.dtype))
            return x

    model = Fabric(accelerator="cpu", devices=1, precision=precision).setup(Probe())
    model(torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.long))
    assert seen == [(dtype, torch.long)]
