"""The precision plugin classes: Lightning's constructors, the instance a program passes is the one used, conflicting
settings are refused naming both, and the plugin chosen for each setting under FSDP and DeepSpeed (where Lightning
refuses the CPU, so the classes are checked against its connector's choice: FSDPPrecision, DeepSpeedPrecision)."""
import importlib.util
import inspect

import pytest
import torch

from fabric_kit import Fabric
from fabric_kit.plugins import (
    DoublePrecision,
    FSDPPrecision,
    HalfPrecision,
    MixedPrecision,
    Precision,
    XLAPrecision,
)
from fabric_kit.strategies import DDPStrategy, FSDPStrategy

pytestmark = pytest.mark.usefixtures("clean_env")
needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed")


def test_constructors_take_lightnings_arguments():
    lightning = pytest.importorskip("lightning.fabric.plugins")
    for ours in (HalfPrecision, MixedPrecision, FSDPPrecision, XLAPrecision):
        theirs = getattr(lightning, ours.__name__)
        assert list(inspect.signature(ours).parameters) == list(inspect.signature(theirs).parameters), ours
    assert DoublePrecision().precision == "64-true" and HalfPrecision().precision == "16-true"
    assert HalfPrecision("bf16-true").dtype == torch.bfloat16
    assert XLAPrecision(precision="bf16-true").precision == "bf16-true"
    mixed = MixedPrecision("16-mixed", "cpu")
    assert (mixed.precision, mixed.device, mixed.dtype) == ("16-mixed", "cpu", torch.float16)
    assert isinstance(mixed.scaler, torch.amp.GradScaler)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    assert MixedPrecision("16-mixed", "cpu", scaler=scaler).scaler is scaler
    assert MixedPrecision("bf16-mixed", "cpu").scaler is None


@pytest.mark.parametrize(("build", "words"), [
    (lambda: MixedPrecision("16-true", "cpu"), ["MixedPrecision(precision='16-true')", "16-mixed, bf16-mixed"]),
    (lambda: MixedPrecision("bf16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu")), ["takes no scaler"]),
    (lambda: HalfPrecision("16-mixed"), ["HalfPrecision(precision='16-mixed')", "16-true, bf16-true"]),
    (lambda: FSDPPrecision("64-true"), ["FSDPPrecision(precision='64-true')", "32-true, 16-true"]),
    (lambda: XLAPrecision("16-mixed"), ["XLAPrecision(precision='16-mixed')", "32-true, bf16-true"]),
])
def test_bad_arguments_are_named(build, words):
    with pytest.raises(ValueError) as error:
        build()
    assert all(word in str(error.value) for word in words), str(error.value)


@pytest.mark.parametrize("how", ["plugins", "precision"])
def test_the_instance_given_is_used(how):
    plugin = HalfPrecision("bf16-true")
    fabric = Fabric(accelerator="cpu", devices=1, **{how: plugin})
    assert fabric.strategy.precision is plugin is fabric.precision
    model = fabric.setup(torch.nn.Linear(2, 2))
    assert model.weight.dtype == torch.bfloat16


@pytest.mark.parametrize(("arguments", "words"), [
    ({"precision": "bf16-mixed", "plugins": Precision()}, ["precision='bf16-mixed'", "Precision(precision='32-true')"]),
    ({"precision": DoublePrecision(), "plugins": [HalfPrecision()]}, ["DoublePrecision", "HalfPrecision"]),
    ({"plugins": [DoublePrecision(), HalfPrecision()]}, ["two Precision plugins", "DoublePrecision", "HalfPrecision"]),
])
def test_two_precisions_are_refused_naming_both(arguments, words):
    with pytest.raises(ValueError) as error:
        Fabric(accelerator="cpu", devices=1, **arguments)
    assert all(word in str(error.value) for word in words), str(error.value)


def test_two_cluster_environments_are_refused():
    from fabric_kit.plugins.environments import LightningEnvironment, SLURMEnvironment
    with pytest.raises(ValueError, match="two ClusterEnvironment plugins, LocalEnvironment and SLURMEnvironment"):
        Fabric(accelerator="cpu", plugins=[LightningEnvironment(), SLURMEnvironment()])


@pytest.mark.parametrize(("setting", "dtype", "policy_dtype"), [
    ("32-true", torch.float32, None), ("16-true", torch.float16, None), ("bf16-true", torch.bfloat16, None),
    ("16-mixed", torch.float16, torch.float16), ("bf16-mixed", torch.bfloat16, torch.bfloat16),
])
def test_fsdp_chooses_fsdp_precision(setting, dtype, policy_dtype):
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
    precision = Fabric(accelerator="cpu", devices=2, strategy="fsdp", precision=setting).strategy.precision
    assert type(precision) is FSDPPrecision and precision.precision == setting and precision.dtype == dtype
    assert precision.mixed_precision_policy.param_dtype == policy_dtype
    assert isinstance(precision.scaler, ShardedGradScaler) == (setting == "16-mixed")
    module = precision.convert_module(torch.nn.Linear(2, 2))
    assert module.weight.dtype == (dtype if setting.endswith("-true") else torch.float32)


def test_a_strategy_instance_takes_fabrics_precision_unless_it_has_its_own():
    strategy = FSDPStrategy()
    assert Fabric(accelerator="cpu", devices=2, strategy=strategy, precision="bf16-mixed").strategy is strategy
    assert type(strategy.precision) is FSDPPrecision and strategy.precision.precision == "bf16-mixed"
    own = DoublePrecision()
    strategy = DDPStrategy(precision=own)
    assert Fabric(accelerator="cpu", devices=2, strategy=strategy).strategy.precision is own


@needs_deepspeed
@pytest.mark.parametrize("setting", ["32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed"])
def test_deepspeed_chooses_deepspeed_precision(setting):
    from fabric_kit.plugins import DeepSpeedPrecision
    precision = Fabric(accelerator="cpu", devices=2, strategy="deepspeed", precision=setting).strategy.precision
    assert type(precision) is DeepSpeedPrecision and precision.precision == setting
    plugin = DeepSpeedPrecision("bf16-mixed")
    assert Fabric(accelerator="cpu", devices=2, strategy="deepspeed", plugins=plugin).strategy.precision is plugin
    with pytest.raises(ValueError, match=r"precision='64-true' is not supported under DeepSpeed; accepted: 32-true"):
        Fabric(accelerator="cpu", devices=2, strategy="deepspeed", precision="64-true")


def test_16_mixed_on_the_cpu_stays_float16():
    """A declared difference: Lightning warns and switches to bf16-mixed on the CPU; here torch's fp16 autocast and
    GradScaler for the CPU run as asked, so the loss-scaling path is the one tested without a GPU."""
    precision = Fabric(accelerator="cpu", devices=1, precision="16-mixed").strategy.precision
    assert type(precision) is MixedPrecision and precision.dtype == torch.float16
    assert isinstance(precision.scaler, torch.amp.GradScaler)
