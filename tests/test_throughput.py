"""fabric_kit.throughput: an MLP's FLOPs equal its matmul arithmetic exactly, on real and on meta tensors; a
transformer's equal 6*N*T plus attention exactly on the meta device, so within 5% of 6*N*T; the rolling window's
rates; the peak table and MFU; ThroughputMonitor logging through a Fabric."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fabric_kit import Fabric
from fabric_kit.throughput import Throughput, ThroughputMonitor, compute_dtype, get_available_flops, measure_flops


def test_an_mlp_counts_exactly_its_matmuls():
    batch, sizes = 16, [(32, 64), (64, 8)]
    model = nn.Sequential(nn.Linear(*sizes[0]), nn.ReLU(), nn.Linear(*sizes[1]))
    x = torch.randn(batch, 32)
    forward = sum(2 * batch * fan_in * fan_out for fan_in, fan_out in sizes)
    assert measure_flops(model, lambda: model(x)) == forward
    # backward: both weight gradients, and the input gradient of the second layer only (x needs none)
    backward = forward + 2 * batch * 64 * 8
    assert measure_flops(model, lambda: model(x), lambda y: y.sum()) == forward + backward
    with torch.device("meta"):
        meta_model = nn.Sequential(nn.Linear(*sizes[0]), nn.ReLU(), nn.Linear(*sizes[1]))
        meta_x = torch.empty(batch, 32)
    assert measure_flops(meta_model, lambda: meta_model(meta_x), lambda y: y.sum()) == forward + backward


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.up, self.down = nn.Linear(dim, 4 * dim, bias=False), nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, length, 3, self.heads, dim // self.heads).unbind(2)
        attention = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                   is_causal=True)
        x = x + self.proj(attention.transpose(1, 2).reshape(batch, length, dim))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class TinyGPT(nn.Module):
    def __init__(self, vocab: int = 512, dim: int = 256, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.Sequential(*(Block(dim, heads) for _ in range(layers)))
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.embed(tokens)))


def test_a_transformer_costs_6NT_plus_its_attention_on_the_meta_device():
    with torch.device("meta"):
        model = TinyGPT(dim=256, layers=2)
        tokens = torch.randint(0, 512, (2, 16))
    flops = measure_flops(model, lambda: model(tokens), lambda logits: logits.sum())
    assert next(model.parameters()).is_meta  # nothing was materialized
    matmul_params = sum(p.numel() for name, p in model.named_parameters() if "norm" not in name and "embed" not in name)
    batch, length, dim, layers = 2, 16, 256, 2
    six_n_t = 6 * matmul_params * batch * length
    attention = 3 * layers * 2 * (2 * batch * length * length * dim)  # QK^T and AV, forward + backward
    assert flops == six_n_t + attention
    assert flops == pytest.approx(six_n_t, rel=0.05)


def test_measure_flops_names_a_non_module():
    with pytest.raises(TypeError, match="measure_flops\\(model=function\\)"):
        measure_flops(lambda x: x, lambda: torch.zeros(1))


def test_rolling_window_arithmetic_and_global_rates():
    throughput = Throughput(available_flops=100.0, world_size=2, window_size=3)
    assert throughput.compute() == {}
    for i, t in enumerate([1.0, 2.0, 3.0, 5.0], start=1):
        throughput.update(time=t, batches=i, samples=8 * i, lengths=80 * i, flops=50)
    metrics = throughput.compute()
    assert metrics["device/batches_per_sec"] == pytest.approx(2 / 3)  # batches 2..4 over 2.0..5.0 s
    assert metrics["samples_per_sec"] == pytest.approx(2 * 16 / 3)
    assert metrics["device/items_per_sec"] == pytest.approx(160 / 3)
    assert metrics["device/flops_per_sec"] == pytest.approx(100 / 3)
    assert metrics["device/mfu"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="samples \\(1\\) cannot be fewer than batches \\(2\\)"):
        throughput.update(time=6.0, batches=2, samples=1)
    throughput.reset()
    assert throughput.compute() == {}
    with pytest.raises(ValueError, match="window_size=1"):
        Throughput(window_size=1)
    with pytest.raises(ValueError, match="available_flops=0"):
        Throughput(available_flops=0)


@pytest.mark.parametrize(("device_name", "dtype", "peak"), [
    ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989.4e12),
    ("NVIDIA H100 PCIe", torch.bfloat16, 756e12),
    ("NVIDIA H200", torch.bfloat16, 989.4e12),
    ("NVIDIA H200", torch.float8_e4m3fn, 1.979e15),
    ("NVIDIA H200 NVL", torch.bfloat16, 835.5e12),
    ("NVIDIA B200", torch.bfloat16, 2.25e15),
    ("NVIDIA B200", torch.float8_e4m3fn, 4.5e15),
    ("NVIDIA L40S", torch.bfloat16, 362e12),
    ("NVIDIA L4", torch.bfloat16, 121e12),
    ("NVIDIA A100-SXM4-80GB", torch.float8_e4m3fn, None),  # no FP8 on Ampere
    ("Some Future GPU", torch.bfloat16, None),
])
def test_peak_flops_by_device_name_and_dtype(monkeypatch, device_name, dtype, peak):
    # No GPU here: the device name is the only thing the lookup asks CUDA for, so it is mocked.
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: device_name)
    assert get_available_flops(torch.device("cuda", 0), dtype) == peak


def test_float32_peak_follows_the_matmul_precision(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")  # no GPU here
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert get_available_flops(torch.device("cuda"), torch.float32) == 67e12
        torch.set_float32_matmul_precision("high")
        assert get_available_flops(torch.device("cuda"), torch.float32) == 494.7e12
    finally:
        torch.set_float32_matmul_precision(previous)
    assert get_available_flops(torch.device("cpu"), torch.bfloat16) is None


@pytest.mark.parametrize(("precision", "dtype"), [("32-true", torch.float32), ("bf16-mixed", torch.bfloat16),
                                                  ("16-true", torch.float16), ("64-true", torch.float64)])
def test_compute_dtype_of_a_precision(precision, dtype):
    assert compute_dtype(Fabric(accelerator="cpu", devices=1, precision=precision).precision) is dtype


def test_compute_dtype_of_fp8():
    pytest.importorskip("torchao")
    from fabric_kit.plugins.precision import Float8Precision

    assert compute_dtype(Float8Precision()) is torch.float8_e4m3fn


class Recording:
    def __init__(self):
        self.calls = []

    def log_metrics(self, metrics, step=None):
        self.calls.append((step, dict(metrics)))


def test_throughput_monitor_logs_through_the_fabric_with_a_given_peak():
    logger = Recording()
    fabric = Fabric(accelerator="cpu", devices=1, loggers=[logger])
    assert ThroughputMonitor(fabric).available_flops is None  # a CPU: no peak in the table
    monitor = ThroughputMonitor(fabric, available_flops=1e3, window_size=2)
    for i in range(1, 4):
        monitor.update(time=float(i), batches=i, samples=4 * i, flops=100)
        monitor.compute_and_log()
    monitor.compute_and_log(step=10)
    assert [step for step, _ in logger.calls] == [0, 1, 2, 10]
    assert "device/mfu" not in logger.calls[0][1]  # the window is not full yet
    assert logger.calls[-1][1]["device/samples_per_sec"] == pytest.approx(4.0)
    assert logger.calls[-1][1]["device/mfu"] == pytest.approx(0.1)
    assert "samples_per_sec" not in logger.calls[-1][1]  # one process: no global rates
