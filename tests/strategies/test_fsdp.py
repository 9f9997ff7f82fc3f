"""FSDP with 2 real CPU processes on gloo.

tests/strategies/fsdp_worker.py runs every FSDP scenario in one pair of processes (start-up dominates the cost) and
the uninterrupted run once more under DDP; the tests assert on what the ranks saved and on the checkpoints they
left behind.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fabric_kit import Fabric
from fabric_kit.checkpoint.consolidate import consolidate
from fabric_kit.checkpoint.directory import MANIFEST, file_sizes, verify_directory
from fabric_kit.strategies.fsdp import FSDPStrategy
from tests.helpers.processes import TORCHRUN_TWO
from tests.strategies.fsdp_worker import STEPS, TinyTransformer
from tests.wrappers_ddp_worker import AVERAGED

WORKER = Path(__file__).with_name("fsdp_worker.py")
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "fabric" / "fsdp_transformer.py"


@pytest.fixture(scope="module")
def runs(run_ranks, tmp_path_factory):
    """(every rank's record by strategy, the folder) of the one launch of the worker, which runs its three
    strategies in turn in the same 2 processes."""
    out = tmp_path_factory.mktemp("runs")
    return run_ranks([WORKER, out, "fsdp", "ddp", "fsdp_lightning_arguments"], out, timeout=300)[1], out


@pytest.fixture(scope="module")
def fsdp(runs):
    records, out = runs
    return [record["fsdp"] for record in records], out / "fsdp"


@pytest.fixture(scope="module")
def ddp(runs):
    return [record["ddp"] for record in runs[0]]


def test_trains_and_shards(fsdp):
    ranks, _ = fsdp
    for result in ranks:
        losses = result["losses"]
        assert len(losses) == STEPS
        assert sum(losses[-3:]) < 0.8 * sum(losses[:3])
        assert result["local_weight_shape"] == (4, 16)  # head.weight (8, 16) split over 2 ranks
    # clip_gradients returns the norm over both ranks' shards as a plain tensor, equal on both.
    assert {t for r in ranks for t in r["norm_types"]} == {"Tensor"}
    assert torch.equal(ranks[0]["norms"], ranks[1]["norms"])


def test_matches_ddp(fsdp, ddp):
    ranks, _ = fsdp
    for sharded, replicated in zip(ranks, ddp, strict=False):
        assert sharded["losses"] == pytest.approx(replicated["losses"], abs=1e-5)


@pytest.mark.parametrize("kind", ["sharded", "full"])
def test_resume_equals_uninterrupted_run(fsdp, kind):
    ranks, out = fsdp
    for result in ranks:
        assert result[kind]["losses"] == pytest.approx(result["losses"], abs=1e-6)
        assert result[kind]["step"] == STEPS // 2  # a plain entry of the state came back too
    assert (out / f"checkpoint_{kind}").is_dir() == (kind == "sharded")
    if kind == "full":  # one file that a plain model loads, through fabric_kit or torch.load's defaults alone
        model = TinyTransformer()
        model.load_state_dict(Fabric(accelerator="cpu", devices=1).load(out / "checkpoint_full")["model"])
        model.load_state_dict(torch.load(out / "checkpoint_full")["model"])


def test_every_file_of_a_two_rank_save_is_in_its_manifest(fsdp):
    # The ranks checksum a share of the files each; the manifest rank 0 wrote must hold them all, and a check of
    # every file on one process (what `fabric consolidate` does) must pass.
    _, out = fsdp
    manifest = json.loads((out / "final" / MANIFEST).read_text())["files"]
    assert set(manifest) == set(file_sizes(out / "final")) >= {"__0_0.distcp", "__1_0.distcp", ".metadata"}
    verify_directory(out / "final")


@pytest.mark.parametrize(("case", "words"), [
    ("__0_0.distcp", ["damaged", "checksum"]), ("__1_0.distcp", ["damaged", "checksum"]),
    ("truncated shard", ["damaged", "bytes, the manifest records"]), ("missing shard", ["missing"]),
    ("flipped byte in .metadata", ["damaged", "checksum"]), ("missing manifest", ["manifest is missing"]),
])
def test_a_damaged_checkpoint_fails_the_load_on_every_rank_and_loads_nothing(fsdp, case, words):
    # Each rank verifies its share of the shard files only; the one that finds the damage tells the other through
    # DCP's planning step, before either rank reads a shard into its objects.
    ranks, _ = fsdp
    for result in ranks:
        kind, message, file, unchanged = result["damaged"][case]
        assert kind == "CheckpointCorruptedError"
        assert file in message and all(word in message for word in words), message
        assert unchanged


def test_a_sharded_save_and_its_load_run_a_fixed_number_of_collectives(fsdp):
    # Save: every rank's RNG states gathered (2 all_gathers: sizes, bytes), the ranks agree that the staging
    # directory exists, that every rank wrote its part, and that rank 0 swapped it in (3 all_reduces), and
    # fabric.save's closing barrier. The manifest's records travel with DCP's own gathering of the write results.
    # Load: fabric.load's barrier; the ranks agree that their shares of the files verified in DCP's own planning.
    ranks, _ = fsdp
    for result in ranks:
        assert result["collectives"] == {"save": 6, "load": 1}


def test_sharded_directory_is_read_by_torch_distributed_checkpoint_alone(fsdp, tmp_path):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    _, out = fsdp
    dcp_to_torch_save(out / "checkpoint_sharded", tmp_path / "gathered.pt")  # no fabric_kit on the read path
    model = TinyTransformer()
    model.load_state_dict(torch.load(tmp_path / "gathered.pt")["model"])


def test_meta_device_init_trains_like_normal_init(fsdp):
    ranks, _ = fsdp
    for result in ranks:
        assert not result["meta_left"]
        assert result["meta_initialised_finite"]
        assert result["meta_losses"] == pytest.approx(result["losses"], abs=1e-6)
    # Each rank initialised its own shard, not a copy of the other's.
    assert not torch.equal(ranks[0]["meta_head_shard"], ranks[1]["meta_head_shard"])


def test_no_backward_sync_defers_the_reduction(fsdp):
    ranks, _ = fsdp
    for result in ranks:
        assert result["no_backward_sync"]["reduced_after_first"] == [True, False]
        assert result["no_backward_sync"]["max_difference"] < 1e-6


def test_joint_setup_repoints_the_optimizer_to_the_shards(fsdp):
    # `model, optimizer = fabric.setup(model, optimizer)` with the optimizer built from the unsharded model trains
    # exactly as the optimizer built from the sharded one.
    ranks, _ = fsdp
    for result in ranks:
        assert result["joint_losses"] == result["losses"]


def test_step_and_marked_methods_run_through_the_sharded_module(fsdp):
    # FSDP2 shards the user's module in place: `model.training_step(batch)` and a method marked with
    # `mark_forward_method` that calls a submodule itself gather the parameters and average the gradients, as under
    # DDP (tests/test_wrappers_ddp.py); unmarked, such a method is refused naming `mark_forward_method`.
    ranks, _ = fsdp
    for result in ranks:
        steps = result["step_methods"]
        for method in ("training_step", "validation_step", "custom_step"):
            assert torch.equal(steps[method], AVERAGED), method
        assert "mark_forward_method('unmarked')" in steps["unmarked_error"]
        assert steps["flag_on_module"] == "set on the wrapper" and steps["forward_restored"]


def test_bad_setup_order_errors(fsdp):
    ranks, _ = fsdp
    errors = ranks[0]["errors"]
    assert "before any model was set up" in errors["optimizers_first"]
    # An optimizer of another model: its parameters are not the set-up model's, so nothing re-points them.
    assert "27 of its 27 parameters" in errors["setup_together"]
    assert "27 of its 27 parameters" in errors["unsharded_optimizer"]
    assert "AdamW already holds state for 27 parameters" in errors.pop("stepped_optimizer")
    for message in errors.values():
        assert "`model, optimizer = fabric.setup(model, optimizer)` with the optimizer built from" in message
        assert "create it afterwards: `model = fabric.setup_module(model)`" in message


def test_consolidate(fsdp, tmp_path):
    ranks, out = fsdp
    output = tmp_path / "model.pt"
    done = subprocess.run([sys.executable, "-m", "fabric_kit", "consolidate", str(out / "final"), "--output",
                           str(output)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    checkpoint = torch.load(output)  # plain torch.load, safe mode
    model = TinyTransformer()
    model.load_state_dict(checkpoint["model"], strict=True)
    for name, tensor in ranks[0]["final_weights"].items():
        assert torch.equal(model.state_dict()[name], tensor), name
    optimizer = torch.optim.AdamW(model.parameters())
    optimizer.load_state_dict(checkpoint["optimizer"])  # index-keyed, as torch saves it
    assert checkpoint["step"] == STEPS


def test_consolidate_rejects_other_paths(tmp_path):
    with pytest.raises(ValueError, match="is not a sharded checkpoint directory"):
        consolidate(tmp_path, tmp_path / "out.pt")
    done = subprocess.run([sys.executable, "-m", "fabric_kit", "consolidate", str(tmp_path), "--output",
                           str(tmp_path / "out.pt")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "is not a sharded checkpoint directory" in done.stderr and "Traceback" not in done.stderr


def test_sharded_directory_without_sharded_strategy(fsdp):
    _, out = fsdp
    fabric = Fabric(accelerator="cpu", devices=1)
    with pytest.raises(IsADirectoryError, match="fabric consolidate .*final --output"):
        fabric.load(out / "final", {"model": TinyTransformer()})


def test_lightning_style_arguments_take_effect(runs):
    # FSDP1-style objects and enums, as Lightning takes them, mapped to what FSDP2 applies: bf16 compute, the
    # (replicate, shard) mesh asked for, the deprecated activation_checkpointing name.
    for result in (record["fsdp_lightning_arguments"] for record in runs[0]):
        assert result["compute_dtypes"] == ["torch.bfloat16"]
        assert (result["mesh_shape"], result["mesh_dims"]) == ((1, 2), ("replicate", "shard"))
        assert result["checkpointed"]
        assert len(result["losses"]) == 4 and result["losses"][-1] < result["losses"][0]


def test_arguments_in_every_form():
    from torch.distributed.fsdp import (
        CPUOffload,
        CPUOffloadPolicy,
        MixedPrecision,
        MixedPrecisionPolicy,
        ShardingStrategy,
    )
    assert FSDPStrategy(sharding_strategy="hybrid_shard").sharding_strategy == "HYBRID_SHARD"
    assert FSDPStrategy(sharding_strategy=ShardingStrategy.NO_SHARD).sharding_strategy == "NO_SHARD"
    for offload, expected in ((True, True), (False, False), (None, False), (CPUOffload(offload_params=True), True),
                              (CPUOffload(), False), (CPUOffloadPolicy(), True)):
        assert FSDPStrategy(cpu_offload=offload).cpu_offload is expected, offload
    policy = FSDPStrategy(mixed_precision=MixedPrecision(param_dtype=torch.float16)).mixed_precision
    assert (policy.param_dtype, policy.reduce_dtype, policy.cast_forward_inputs) == (torch.float16, None, True)
    own = MixedPrecisionPolicy(param_dtype=torch.bfloat16)
    assert FSDPStrategy(mixed_precision=own).mixed_precision is own
    assert FSDPStrategy().mixed_precision is None  # from Fabric's precision
    assert FSDPStrategy(device_mesh=(2, 4)).device_mesh == (2, 4)


def test_deprecated_activation_checkpointing_name():
    class Layer(torch.nn.Linear):
        pass

    with pytest.warns(DeprecationWarning, match=r"activation_checkpointing=.*deprecated; use FSDPStrategy\("
                                                 r"activation_checkpointing_policy=\{"):
        strategy = FSDPStrategy(activation_checkpointing=[Layer])
    assert strategy.activation_checkpointing_policy(Layer(1, 1))
    assert not strategy.activation_checkpointing_policy(torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match="both activation_checkpointing and activation_checkpointing_policy"):
        FSDPStrategy(activation_checkpointing=Layer, activation_checkpointing_policy={Layer})


def test_bad_arguments():
    from torch.distributed.fsdp import MixedPrecision
    with pytest.raises(ValueError, match="sharding_strategy='ZERO3' is not supported; accepted: FULL_SHARD"):
        FSDPStrategy(sharding_strategy="ZERO3")
    with pytest.raises(ValueError, match="state_dict_type='local' is not supported"):
        FSDPStrategy(state_dict_type="local")
    with pytest.raises(TypeError, match="auto_wrap_policy=.*accepted: a set of nn.Module classes"):
        FSDPStrategy(auto_wrap_policy={"Block"})
    with pytest.raises(TypeError, match="cpu_offload='yes' is not supported; accepted: True, False"):
        FSDPStrategy(cpu_offload="yes")
    with pytest.raises(ValueError, match="sets buffer_dtype, keep_low_precision_grads, which FSDP2"):
        FSDPStrategy(mixed_precision=MixedPrecision(buffer_dtype=torch.float16, keep_low_precision_grads=True))
    with pytest.raises(TypeError, match="mixed_precision='bf16' is not supported; accepted: "):
        FSDPStrategy(mixed_precision="bf16")
    with pytest.raises(TypeError, match=r"device_mesh=\(2, 0\) is not supported; accepted: a torch DeviceMesh"):
        FSDPStrategy(device_mesh=(2, 0))
    with pytest.raises(ValueError, match="sharding_strategy='NO_SHARD' contradict each other"):
        FSDPStrategy(device_mesh=(1, 2), sharding_strategy="no_shard")


@pytest.mark.parametrize(("name", "offload"), [("fsdp", False), ("fsdp_cpu_offload", True)])
def test_presets(clean_env, name, offload):
    strategy = Fabric(accelerator="cpu", devices=2, strategy=name).strategy
    assert isinstance(strategy, FSDPStrategy) and strategy.cpu_offload is offload


def test_mixed_precision_becomes_an_fsdp_policy(clean_env):
    strategy = Fabric(accelerator="cpu", devices=2, strategy="fsdp", precision="bf16-mixed").strategy
    policy = strategy.precision.mixed_precision_policy
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)


def test_example_runs(run_ranks, tmp_path):
    proc = run_ranks([*TORCHRUN_TWO, EXAMPLE, "--steps", "4", "--checkpoint", tmp_path / "ckpt"],
                     check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "ckpt" / ".metadata").is_file()
    assert "step 4" in proc.stdout
