"""Lightning's import paths on fabric_kit: every name is importable where Lightning's API reference puts it, is the
one implementation (not a copy), and the modules stay light to import. Names Lightning has there that fabric_kit
does not are listed with the reason, so a new gap fails here."""
import importlib
import subprocess
import sys
import types

import pytest

from fabric_kit import environments, precision
from tests.helpers.processes import process_environment

# (public module, name, the implementation it must be); lazy ones are resolved on first access.
PATHS = [
    ("fabric_kit.strategies", "FSDPStrategy", "fabric_kit.strategies.fsdp.strategy:FSDPStrategy"),
    ("fabric_kit.strategies", "DeepSpeedStrategy", "fabric_kit.strategies.deepspeed:DeepSpeedStrategy"),
    ("fabric_kit.strategies", "XLAStrategy", "fabric_kit.strategies.xla:XLAStrategy"),
    ("fabric_kit.strategies", "XLAFSDPStrategy", "fabric_kit.strategies.xla_fsdp:XLAFSDPStrategy"),
    ("fabric_kit.strategies", "SingleDeviceXLAStrategy", "fabric_kit.strategies.xla:SingleXLAStrategy"),
    ("fabric_kit.strategies", "DDPStrategy", "fabric_kit.strategies.ddp:DDPStrategy"),
    ("fabric_kit.strategies", "SingleDeviceStrategy", "fabric_kit.strategies.single_device:SingleDeviceStrategy"),
    ("fabric_kit.strategies", "ParallelStrategy", "fabric_kit.strategies.parallel:ParallelStrategy"),
    ("fabric_kit.strategies", "Strategy", "fabric_kit.strategies.strategy:Strategy"),
    ("fabric_kit.strategies", "STRATEGY_REGISTRY", "fabric_kit.strategies.registry:STRATEGY_REGISTRY"),
    ("fabric_kit.plugins", "Precision", "fabric_kit.precision:Precision"),
    ("fabric_kit.plugins", "MixedPrecision", "fabric_kit.precision:MixedPrecision"),
    ("fabric_kit.plugins", "XLAPrecision", "fabric_kit.precision:XLAPrecision"),
    ("fabric_kit.plugins", "DoublePrecision", "fabric_kit.precision.dtype:DoublePrecision"),
    ("fabric_kit.plugins", "HalfPrecision", "fabric_kit.precision.dtype:HalfPrecision"),
    ("fabric_kit.plugins", "FSDPPrecision", "fabric_kit.precision.fsdp:FSDPPrecision"),
    ("fabric_kit.plugins.precision", "FSDPPrecision", "fabric_kit.precision.fsdp:FSDPPrecision"),
    ("fabric_kit.plugins", "DeepSpeedPrecision", "fabric_kit.strategies.deepspeed:DeepSpeedPrecision"),
    ("fabric_kit.plugins", "ClusterEnvironment", "fabric_kit.environments:ClusterEnvironment"),
    ("fabric_kit.plugins", "CheckpointIO", "fabric_kit.checkpoint.checkpoint_io:CheckpointIO"),
    ("fabric_kit.plugins", "TorchCheckpointIO", "fabric_kit.checkpoint.checkpoint_io:TorchCheckpointIO"),
    ("fabric_kit.plugins.io", "CheckpointIO", "fabric_kit.checkpoint.checkpoint_io:CheckpointIO"),
    ("fabric_kit.plugins.io", "TorchCheckpointIO", "fabric_kit.checkpoint.checkpoint_io:TorchCheckpointIO"),
    ("fabric_kit.plugins.collectives", "TorchCollective", "fabric_kit.collectives:TorchCollective"),
    ("fabric_kit.plugins.collectives", "Collective", "fabric_kit.collectives:Collective"),
    ("fabric_kit.plugins.collectives", "SingleDeviceCollective", "fabric_kit.collectives:SingleDeviceCollective"),
    ("fabric_kit.plugins.io", "AsyncCheckpointIO", "fabric_kit.checkpoint.checkpoint_io:AsyncCheckpointIO"),
    ("fabric_kit.plugins", "BitsandbytesPrecision", "fabric_kit.precision.bitsandbytes:BitsandbytesPrecision"),
    ("fabric_kit.plugins.precision", "Float8Precision", "fabric_kit.precision.fp8:Float8Precision"),
    ("fabric_kit.plugins.precision", "DeepSpeedPrecision", "fabric_kit.strategies.deepspeed:DeepSpeedPrecision"),
    ("fabric_kit.plugins.environments", "LightningEnvironment", "fabric_kit.environments:LocalEnvironment"),
    ("fabric_kit.plugins.environments", "SLURMEnvironment", "fabric_kit.environments:SLURMEnvironment"),
    ("fabric_kit.accelerators", "TPUAccelerator", "fabric_kit.accelerators.xla:XLAAccelerator"),
    ("fabric_kit.accelerators", "find_usable_cuda_devices", "fabric_kit.accelerators.cuda:find_usable_cuda_devices"),
    ("fabric_kit.accelerators", "ACCELERATOR_REGISTRY", "fabric_kit.accelerators:ACCELERATOR_REGISTRY"),
    ("fabric_kit.utilities", "rank_zero_only", "fabric_kit.rank_zero:rank_zero_only"),
    ("fabric_kit.utilities", "rank_zero_info", "fabric_kit.rank_zero:rank_zero_info"),
    ("fabric_kit.utilities", "rank_zero_warn", "fabric_kit.rank_zero:rank_zero_warn"),
    ("fabric_kit.utilities", "seed_everything", "fabric_kit.seed:seed_everything"),
    ("fabric_kit.utilities", "AttributeDict", "fabric_kit.attribute_dict:AttributeDict"),
    ("fabric_kit.utilities", "has_len", "fabric_kit.data.length:has_len"),
    ("fabric_kit.utilities", "suggested_max_num_workers", "fabric_kit.data.workers:suggested_max_num_workers"),
    ("fabric_kit.utilities", "DistributedSamplerWrapper", "fabric_kit.data.sampler:DistributedSamplerWrapper"),
    ("fabric_kit.utilities", "convert_tensors_to_scalars", "fabric_kit.collections:convert_tensors_to_scalars"),
    ("fabric_kit.utilities", "move_data_to_device", "fabric_kit.collections:move_to_device"),
    ("fabric_kit.utilities", "apply_to_collection", "fabric_kit.collections:apply_to_collection"),
    ("fabric_kit.utilities", "get_filesystem", "fabric_kit.filesystem:get_filesystem"),
    ("fabric_kit.utilities", "find_usable_cuda_devices", "fabric_kit.accelerators.cuda:find_usable_cuda_devices"),
    ("fabric_kit.utilities", "Throughput", "fabric_kit.throughput:Throughput"),
    ("fabric_kit.utilities", "ThroughputMonitor", "fabric_kit.throughput:ThroughputMonitor"),
    ("fabric_kit.utilities", "measure_flops", "fabric_kit.throughput:measure_flops"),
    ("fabric_kit.utilities.throughput", "Throughput", "fabric_kit.throughput:Throughput"),
    ("fabric_kit.utilities.throughput", "ThroughputMonitor", "fabric_kit.throughput:ThroughputMonitor"),
    ("fabric_kit.utilities.throughput", "measure_flops", "fabric_kit.throughput:measure_flops"),
    ("fabric_kit.utilities.throughput", "get_available_flops", "fabric_kit.throughput:get_available_flops"),
    ("fabric_kit.utilities.spike", "SpikeDetection", "fabric_kit.spike:SpikeDetection"),
    ("fabric_kit.utilities.spike", "TrainingSpikeException", "fabric_kit.spike:TrainingSpikeException"),
    ("fabric_kit.utilities.rank_zero", "rank_zero_only", "fabric_kit.rank_zero:rank_zero_only"),
    ("fabric_kit.utilities.seed", "seed_everything", "fabric_kit.seed:seed_everything"),
    ("fabric_kit.utilities.seed", "reset_seed", "fabric_kit.seed:reset_seed"),
    ("fabric_kit.utilities.seed", "isolate_rng", "fabric_kit.seed:isolate_rng"),
    ("fabric_kit.utilities.data", "AttributeDict", "fabric_kit.attribute_dict:AttributeDict"),
    ("fabric_kit.utilities.distributed", "DistributedSamplerWrapper",
     "fabric_kit.data.sampler:DistributedSamplerWrapper"),
    ("fabric_kit.utilities.apply_func", "move_data_to_device", "fabric_kit.collections:move_to_device"),
    ("fabric_kit.utilities.cloud_io", "get_filesystem", "fabric_kit.filesystem:get_filesystem"),
]

# Names Lightning exports at these paths that fabric_kit does not have (yet), and why.
ABSENT = {
    "lightning.fabric.strategies": {
        "DataParallelStrategy": "no DataParallel on GPUs (DDP instead); strategy='dp' on CPUs is ddp, as in Lightning",
        "SingleTPUStrategy": "Lightning's deprecated alias of SingleDeviceXLAStrategy",
    },
    "lightning.fabric.plugins": {
        "TransformerEnginePrecision": "Transformer Engine is not supported",
    },
    "lightning.fabric.utilities": {
        "disable_possible_user_warnings": "fabric_kit gives no 'possible user warnings' to disable",
        "is_shared_filesystem": "not provided", "LightningEnum": "Lightning's internal enum base",
        "rank_zero_deprecation": "fabric_kit deprecates nothing yet",
    },
    "lightning.fabric.accelerators": {},
    "lightning.fabric.plugins.io": {},
    "lightning.fabric.plugins.collectives": {},
}
OURS = {f"lightning.fabric.{name}": f"fabric_kit.{name}"
        for name in ("strategies", "plugins", "utilities", "accelerators", "plugins.io", "plugins.collectives")}


def resolve(target):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize(("module", "name", "implementation"), PATHS, ids=[f"{m}.{n}" for m, n, _ in PATHS])
def test_each_name_is_the_one_implementation(module, name, implementation):
    public = importlib.import_module(module)
    assert getattr(public, name) is resolve(implementation)
    assert name in public.__all__ and name in dir(public)


@pytest.mark.parametrize("lightning_path", sorted(ABSENT))
def test_every_lightning_name_there_exists_or_is_declared_absent(lightning_path):
    theirs = importlib.import_module(lightning_path)
    names = {n for n in getattr(theirs, "__all__", dir(theirs))
             if not n.startswith("_") and not isinstance(getattr(theirs, n), types.ModuleType)}
    ours = importlib.import_module(OURS[lightning_path])
    missing = sorted(n for n in names - set(ABSENT[lightning_path]) if not hasattr(ours, n))
    assert not missing, f"{OURS[lightning_path]} lacks Lightning's {missing}: add them, or list them in ABSENT"
    present = sorted(n for n in ABSENT[lightning_path] if hasattr(ours, n))
    assert not present, f"{present} exist now: take them out of ABSENT"


def test_every_precision_and_environment_class_is_a_plugin():
    """A precision or environment class added to its package without its plugin path fails here."""
    import fabric_kit.plugins.environments
    import fabric_kit.plugins.precision
    pairs = ((precision, fabric_kit.plugins.precision), (environments, fabric_kit.plugins.environments))
    for package, plugins in pairs:
        classes = {n for n in package.__all__ if isinstance(getattr(package, n), type)}
        assert classes <= set(plugins.__all__), sorted(classes - set(plugins.__all__))


def test_an_unknown_lazy_name_is_an_attribute_error():
    import fabric_kit.strategies
    with pytest.raises(AttributeError, match="module 'fabric_kit.strategies' has no attribute 'NoSuchStrategy'"):
        fabric_kit.strategies.NoSuchStrategy  # noqa: B018


def test_the_public_modules_import_nothing_heavy():
    modules = ("fabric_kit.strategies", "fabric_kit.plugins", "fabric_kit.plugins.precision",
               "fabric_kit.plugins.environments", "fabric_kit.plugins.io", "fabric_kit.plugins.collectives",
               "fabric_kit.utilities",
               "fabric_kit.accelerators")
    heavy = ("deepspeed", "torch_xla", "bitsandbytes", "torchao", "tensorboardX", "loops", "lightning",
             "lightning_utilities", "fsspec",
             "torch.distributed.fsdp", "fabric_kit.strategies.fsdp", "fabric_kit.strategies.deepspeed",
             "fabric_kit.strategies.xla")
    code = (f"import sys, importlib\nfor m in {modules!r}: importlib.import_module(m)\n"
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env=process_environment())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

