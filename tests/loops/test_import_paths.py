"""Lightning's pytorch import paths on loops: `loops.utilities`, the logger and callback modules Hydra configs name
in `_target_`, the logo, and `import loops as L` giving both `L.Fabric` and `L.LightningModule`."""
import importlib
import subprocess
import sys
from pathlib import Path

import lightning.pytorch.callbacks
import pytest

import fabric_kit
import fabric_kit.plugins.io
import loops
import loops.callbacks
import loops.loggers
import loops.utilities
from fabric_kit.loggers import Logger
from fabric_kit.rank_zero import rank_zero_info, rank_zero_only, rank_zero_warn
from loops.trainer.hooks import overrides
from tests.helpers.processes import process_environment

PATHS = [
    ("loops.utilities", "rank_zero_only", rank_zero_only), ("loops.utilities", "rank_zero_info", rank_zero_info),
    ("loops.utilities", "rank_zero_warn", rank_zero_warn),
    ("loops.utilities.rank_zero", "rank_zero_only", rank_zero_only),
    ("loops.utilities.seed", "isolate_rng", fabric_kit.seed.isolate_rng),
    ("loops.utilities.combined_loader", "CombinedLoader", loops.utilities.CombinedLoader),
    ("loops.utilities", "AttributeDict", fabric_kit.utilities.AttributeDict),
    ("loops.loggers.csv_logs", "CSVLogger", loops.loggers.CSVLogger),
    ("loops.loggers.tensorboard", "TensorBoardLogger", loops.loggers.TensorBoardLogger),
    ("loops.loggers.logger", "Logger", Logger),
    ("loops", "Fabric", fabric_kit.Fabric),
    ("loops", "seed_everything", fabric_kit.seed_everything),
    ("loops.strategies", "DDPStrategy", fabric_kit.strategies.DDPStrategy),
    ("loops.accelerators", "CPUAccelerator", fabric_kit.accelerators.CPUAccelerator),
    ("loops.plugins", "MixedPrecision", fabric_kit.plugins.MixedPrecision),
    ("loops.plugins", "AsyncCheckpointIO", fabric_kit.plugins.io.AsyncCheckpointIO),
]
# Callback modules Lightning has that loops does not, and why.
ABSENT_CALLBACK_MODULES = {"pruning": "ModelPruning is not provided",
                           "rich_model_summary": "RichModelSummary is not provided"}


# Names Lightning exports from these modules that loops does not have, and why.
ABSENT = {
    "utilities": {"measure_flops": "issue 18",
                  "GradClipAlgorithmType": "gradient_clip_algorithm takes the strings", "grad_norm": "not provided",
                  "disable_possible_user_warnings": "loops gives no 'possible user warnings' to disable",
                  "find_shared_parameters": "not provided", "set_shared_parameters": "not provided",
                  "is_picklable": "not provided", "is_shared_filesystem": "not provided",
                  "LightningEnum": "Lightning's internal enum base", "rank_zero_deprecation": "nothing is deprecated"},
    "strategies": {}, "accelerators": {},
    "plugins": {"LayerSync": "sync_batchnorm=True converts with torch's SyncBatchNorm, no plugin",
                "TorchSyncBatchNorm": "sync_batchnorm=True converts with torch's SyncBatchNorm, no plugin",
                "TransformerEnginePrecision": "Transformer Engine is not supported"},
    "profilers": {"XLAProfiler": "no XLA profiler (torch_xla's own profiler server)"},
    "demos": {"LightningLSTM": "the LSTM demo is not provided", "SimpleLSTM": "the LSTM demo is not provided",
              "SequenceSampler": "the LSTM demo is not provided"},
}


@pytest.mark.parametrize("name", sorted(ABSENT))
def test_every_lightning_name_there_exists_or_is_declared_absent(name):
    theirs = set(importlib.import_module(f"lightning.pytorch.{name}").__all__)
    ours = importlib.import_module(f"loops.{name}")
    missing = sorted(n for n in theirs - set(ABSENT[name]) if not hasattr(ours, n))
    assert not missing, f"loops.{name} lacks Lightning's {missing}: add them, or list them in ABSENT"
    present = sorted(n for n in ABSENT[name] if hasattr(ours, n))
    assert not present, f"{present} exist now: take them out of ABSENT"


@pytest.mark.parametrize(("module", "name", "implementation"), PATHS, ids=[f"{m}.{n}" for m, n, _ in PATHS])
def test_each_name_is_the_one_implementation(module, name, implementation):
    assert getattr(importlib.import_module(module), name) is implementation


def test_every_lightning_callback_module_exists_with_the_classes_loops_has():
    """`loops.callbacks.model_checkpoint.ModelCheckpoint` & co., as Hydra configs name them."""
    theirs = Path(lightning.pytorch.callbacks.__file__).parent
    names = sorted(p.stem for p in theirs.glob("*.py") if p.stem != "__init__") + ["progress"]
    for name in names:
        if name in ABSENT_CALLBACK_MODULES:
            assert importlib.util.find_spec(f"loops.callbacks.{name}") is None, f"{name} exists now: list it"
            continue
        ours = importlib.import_module(f"loops.callbacks.{name}")
        lightning_module = importlib.import_module(f"lightning.pytorch.callbacks.{name}")
        shared = {n for n in vars(lightning_module) if n in loops.callbacks.__all__
                  and getattr(lightning_module, n).__module__ == lightning_module.__name__}
        for class_name in shared:
            assert getattr(ours, class_name) is getattr(loops.callbacks, class_name), f"{name}.{class_name}"


def test_one_namespace_gives_fabric_and_the_trainer():
    import loops as L
    assert {"Fabric", "LightningModule", "Trainer", "LightningDataModule", "Callback"} <= set(L.__all__)


def test_the_logo_is_our_own(capsys):
    loops.cli_lightning_logo()
    printed = capsys.readouterr().out
    assert "fabric_kit" in printed and printed.startswith("\n") and printed.endswith("\n\n")


class Hooks(loops.LightningModule):
    def training_step(self, batch, batch_idx):
        return None


class Watcher(loops.Callback):
    def on_train_start(self, trainer, pl_module):
        pass


def test_is_overridden():
    from loops.utilities.model_helpers import is_overridden
    assert is_overridden("training_step", Hooks()) and not is_overridden("configure_optimizers", Hooks())
    assert is_overridden("on_train_start", Watcher()) and not is_overridden("on_train_end", Watcher())
    assert not is_overridden("training_step", None)
    assert is_overridden("forward", Hooks(), parent=loops.LightningModule) == overrides(Hooks(), "forward",
                                                                                        loops.LightningModule)
    with pytest.raises(ValueError, match="pass parent=, the class that defines the method"):
        is_overridden("forward", object())


def test_importing_loops_leaves_the_heavy_packages_out_until_named():
    """A Trainer process pays for torch's sharded checkpoints (DTensor, sympy), tensorboardX, the CLI's
    jsonargparse, DeepSpeed and XLA only when it uses them; the strategy and plugin paths load a sharding backend
    when it is first named."""
    heavy = ("torch.distributed.checkpoint", "sympy", "tensorboardX", "jsonargparse", "deepspeed", "lightning",
             "torch_xla", "fabric_kit.strategies.fsdp", "fabric_kit.strategies.deepspeed")
    code = ("import sys\nimport loops as L\nimport loops.plugins\n"
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
            "L.strategies.FSDPStrategy\n"
            "print('fabric_kit.strategies.fsdp' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env=process_environment())
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[]", "True"]
