"""What a user without the `xla` extra sees. torch_xla is hidden (sys.modules entry None), so these run the same
in the default suite and in the XLA lane."""
import subprocess
import sys

import pytest

from fabric_kit.fabric import Fabric
from fabric_kit.precision import create_precision
from fabric_kit.precision.xla import XLAPrecision


@pytest.fixture
def no_torch_xla(monkeypatch, clean_env):
    monkeypatch.setitem(sys.modules, "torch_xla", None)


@pytest.mark.parametrize("kwargs", [{"accelerator": "xla"}, {"accelerator": "tpu"}, {"strategy": "xla"},
                                    {"strategy": "xla_fsdp"}, {"strategy": "single_xla"}])
def test_missing_torch_xla_names_the_extra_and_the_torch_pin(no_torch_xla, kwargs):
    with pytest.raises(ModuleNotFoundError, match=r"fabric_kit\[xla\].*torch==2\.9\.0"):
        Fabric(**kwargs)


def test_importing_fabric_kit_does_not_import_torch_xla():
    code = ("import sys, fabric_kit, fabric_kit.fabric, fabric_kit.strategies.xla, fabric_kit.strategies.xla_fsdp; "
            "assert 'torch_xla' not in sys.modules, 'torch_xla was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_xla_precisions_are_bf16_or_float32():
    assert create_precision("bf16-mixed", "xla").precision == "bf16-mixed"
    assert isinstance(create_precision("32-true", "xla"), XLAPrecision)
    for name in ("16-mixed", "16-true", "64-true"):
        with pytest.raises(ValueError, match=r"XLAPrecision\(precision=.*\) is not supported; accepted: 32-true"):
            XLAPrecision(name)
