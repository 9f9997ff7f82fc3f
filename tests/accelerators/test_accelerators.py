"""Accelerators by name and the `devices` argument. This machine may have no GPU: the CUDA tests that need a device
count replace `torch.cuda.device_count` (absent hardware); everything else runs for real."""
import pytest
import torch

from fabric_kit.accelerators import (
    CPUAccelerator,
    CUDAAccelerator,
    MPSAccelerator,
    accelerator_names,
    create_accelerator,
)


def test_names():
    assert {"auto", "cpu", "cuda", "gpu", "mps"} <= set(accelerator_names())
    assert isinstance(create_accelerator("cpu"), CPUAccelerator)


def test_auto_picks_cuda_then_mps_then_cpu():
    expected = (CUDAAccelerator if torch.cuda.is_available()
                else MPSAccelerator if MPSAccelerator.is_available() else CPUAccelerator)
    assert type(create_accelerator("auto")) is expected


def test_unknown_name():
    with pytest.raises(ValueError, match="accelerator='npu' is not known; accepted: ") as error:
        create_accelerator("npu")
    assert all(name in str(error.value) for name in accelerator_names())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
@pytest.mark.parametrize("name", ["cuda", "gpu"])
def test_cuda_without_a_gpu(name):
    with pytest.raises(RuntimeError, match=f"accelerator={name!r} was requested but is not available"):
        create_accelerator(name)


@pytest.mark.parametrize(("devices", "expected"), [
    (1, [0]), (3, [0, 1, 2]), ("2", [0, 1]), ("auto", [0]), (-1, [0]), ("-1", [0]),
    ([0, 1], [0, 1]), ([4, 7], [0, 1]), ("0,1", [0, 1]), ("3,", [0]),
])
def test_cpu_devices_count_processes(devices, expected):
    cpu = CPUAccelerator()
    assert cpu.parse_devices(devices) == expected
    assert cpu.get_parallel_devices(expected) == [torch.device("cpu")] * len(expected)


@pytest.mark.parametrize(("devices", "message"), [
    (0, "devices=0 is not valid: pass a positive number of devices"),
    (-3, "devices=-3 is not valid: pass a positive number of devices"),
    ("zero", "devices='zero' is not understood: pass a positive int"),
    ([], r"devices=\[\] is not valid: a list of devices must hold non-negative indices"),
    ([0, -2], r"devices=\[0, -2\] is not valid: a list of devices must hold non-negative indices"),
    (2.0, "devices=2.0 is not understood"),
])
def test_bad_devices(devices, message):
    with pytest.raises(ValueError, match=message):
        CPUAccelerator().parse_devices(devices)


def test_cuda_devices_are_indices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # absent hardware: pretend two GPUs
    cuda = CUDAAccelerator()
    assert cuda.parse_devices("auto") == [0, 1]
    assert cuda.parse_devices([1]) == [1]
    assert cuda.parse_devices("1,0") == [1, 0]
    assert cuda.get_parallel_devices([1, 0]) == [torch.device("cuda", 1), torch.device("cuda", 0)]
    with pytest.raises(ValueError, match=r"asks for CUDA device\(s\) \[2, 3\], but this machine has 2 visible"):
        cuda.parse_devices([0, 2, 3])
    with pytest.raises(ValueError, match=r"devices=3 asks for CUDA device\(s\) \[2\]"):
        cuda.parse_devices(3)
