"""ModelParallelStrategy with real CPU processes on gloo: TP = 2 on 2 processes, FSDP2 x TP = 2 x 2 on 4, each
against one process training the same global batches; checkpoints saved under TP = 2 and loaded under TP = 2,
FSDP2 x TP, plain FSDP, one process (a full file, and `fabric consolidate`d shards).

tests/strategies/model_parallel_worker.py runs every 2-process scenario in one set of processes; the 4-process ones
run in the processes of the pipeline tests' layouts (the `model_parallel_processes` fixture of conftest.py launches
both); the one-process layout runs in this process. The 2-process run writes the checkpoints the others read, so it
runs first.
"""
import pytest
import torch

from fabric_kit import Fabric
from fabric_kit.strategies import ModelParallelStrategy
from tests.helpers.examples import number_after, run_example
from tests.helpers.processes import as_one_process
from tests.strategies import model_parallel_worker
from tests.strategies.model_parallel_model import GLOBAL_BATCH, SPLIT, parallelize


@pytest.fixture(scope="module")
def runs(model_parallel_processes):
    """{layout: [what each rank saved]}: "tp2" and "dp2tp2" from their processes, "single" from this one."""
    results = {"tp2": model_parallel_processes["tp2"],
               "dp2tp2": [rank["dp2tp2"] for rank in model_parallel_processes["four"]]}
    with as_one_process():
        results["single"] = [model_parallel_worker.single(str(model_parallel_processes["tp2_out"]))]
    return results


def close(a, b, tol):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=tol, rtol=0, msg=name)


@pytest.mark.parametrize("layout", ["tp2", "dp2tp2"])
def test_trains_like_one_process(runs, layout):
    reference = runs["single"][0]["run"]
    for rank in runs[layout]:
        assert rank["run"]["losses"] == pytest.approx(reference["losses"], abs=1e-5)
        torch.testing.assert_close(rank["run"]["norms"], reference["norms"], atol=1e-5, rtol=0)
        close(rank["run"]["weights"], reference["weights"], 1e-5)
    assert reference["losses"][-1] < 0.5 * reference["losses"][0]
    assert (reference["norms"] > 1.0).any()  # clipping at 1.0 changed some steps


def test_tensor_parallel_ranks_hold_different_shards_of_equal_weights(runs):
    tp0, tp1 = runs["tp2"]
    assert tp0["run"]["placements"]["blocks.0.attention.wq.weight"] == "(Shard(dim=0),)"
    assert tp0["run"]["placements"]["blocks.0.mlp.w2.weight"] == "(Shard(dim=1),)"
    assert tp0["run"]["local"]["blocks.0.attention.wq.weight"].shape == (8, 16)
    assert not torch.equal(tp0["run"]["local"]["blocks.0.mlp.w1.weight"], tp1["run"]["local"]["blocks.0.mlp.w1.weight"])
    close(tp0["run"]["weights"], tp1["run"]["weights"], 0)
    # FSDP2 x TP: both mesh dimensions shard the weight; the row-wise bias is sharded over dp, replicated over tp.
    placements = runs["dp2tp2"][0]["run"]["placements"]
    assert "Shard(dim=0)" in placements["blocks.0.attention.wq.weight"]
    assert placements["blocks.0.mlp.w2.bias"] == "(Shard(dim=0), Replicate())"
    assert placements["embed.weight"] == "(Shard(dim=0),)"  # outside the TP plan: FSDP only


def test_mesh_is_named_and_auto_sizes_fill_the_world(runs):
    assert runs["tp2"][0]["mesh"] == (("data_parallel", "tensor_parallel"), (1, 2))
    assert runs["dp2tp2"][0]["mesh"] == (("data_parallel", "tensor_parallel"), (2, 2))  # dp "auto" with tp=2


@pytest.mark.parametrize(("layout", "entry"), [("tp2", "from_sharded"), ("dp2tp2", "from_sharded"),
                                               ("tp2", "fsdp_from_sharded"), ("single", "from_full"),
                                               ("single", "from_consolidated")])
def test_checkpoint_saved_under_tp2_resumes_in_another_layout(runs, layout, entry):
    expected = runs["single"][0]["run"]
    for rank in runs[layout]:
        resumed = rank[entry]
        assert resumed["step"] == SPLIT
        assert resumed["samples"] == SPLIT * GLOBAL_BATCH  # the loader continues at the same global sample
        assert resumed["losses"] == pytest.approx(expected["losses"][SPLIT:], abs=1e-5)
        close(resumed["weights"], expected["weights"], 1e-5)


@pytest.mark.parametrize("layout", ["tp2", "dp2tp2"])
def test_meta_device_init_materialises_own_shards_and_equal_replicas(runs, layout):
    ranks = [rank["meta"] for rank in runs[layout]]
    for rank in ranks:
        assert not rank["meta_left"] and rank["finite"]
    tp_peers = (ranks[0], ranks[1])  # ranks 0 and 1 form one tensor-parallel group in both layouts
    assert not torch.equal(*(r["local"]["blocks.0.mlp.w1.weight"] for r in tp_peers))  # each its own shard
    assert torch.equal(*(r["local"]["blocks.0.mlp.w2.bias"] for r in tp_peers))  # replicated over tp: equal
    if layout == "tp2":
        assert torch.equal(*(r["local"]["embed.weight"] for r in tp_peers))  # a plain tensor on every rank


def test_bf16_mixed_computes_in_bf16_and_keeps_float32_parameters_and_gradients(runs):
    reference = runs["single"][0]["run"]["losses"]
    for rank in runs["tp2"]:
        result = rank["bf16"]
        assert result["computed"] == torch.bfloat16
        assert result["params"] == {torch.float32} and result["grads"] == {torch.float32}
        assert result["losses"] == pytest.approx(reference, abs=0.05)  # the float32 run, within bf16's rounding


def test_no_backward_sync_defers_the_data_parallel_reduction(runs):
    for rank in runs["dp2tp2"]:
        assert rank["no_backward_sync"] < 1e-6


def test_bad_setup_errors_name_the_value_and_what_is_accepted(runs):
    errors = runs["tp2"][0]["errors"]
    assert "fabric.setup(model, optimizer) got 1 optimizer(s)" in errors["optimizer_first"]
    assert "before any model was set up" in errors["optimizers_before_model"]
    # the blocks' 16 tensor-parallel parameters became DTensors; embedding, norms and head stayed as they were
    assert "the SGD holds 16 of its 23 parameters from a model that was not set up" in errors[
        "optimizer_before_setup_module"]
    assert "no_parallelism returned a Transformer without DTensor parameters" in errors["no_dtensor"]
    assert "parallelize_module" in errors["no_dtensor"] and "fully_shard" in errors["no_dtensor"]
    assert "returns_nothing returned a NoneType" in errors["not_a_module"]
    for message in errors.values():
        assert "accepted" in message or "must be created afterwards" in message


@pytest.mark.parametrize(("dp", "tp"), [(3, 1), (1, 3), ("auto", 3)])
def test_a_mesh_that_does_not_make_the_world_size_is_refused_before_any_process_group(clean_env, dp, tp):
    strategy = ModelParallelStrategy(parallelize, data_parallel_size=dp, tensor_parallel_size=tp)
    Fabric(accelerator="cpu", devices=2, strategy=strategy)
    with pytest.raises(ValueError, match=rf"data_parallel_size={dp!r} and tensor_parallel_size={tp!r} do not make "
                                         r"a mesh of the world size 2; accepted: sizes whose product is 2"):
        strategy.setup_environment()


@pytest.mark.parametrize(("argument", "value"), [("data_parallel_size", 0), ("tensor_parallel_size", "2"),
                                                 ("data_parallel_size", True)])
def test_bad_sizes_are_refused_at_construction(argument, value):
    with pytest.raises(ValueError, match=rf"{argument}={value!r} is not valid; accepted: a positive int or 'auto'"):
        ModelParallelStrategy(parallelize, **{argument: value})


def test_parallelize_fn_must_be_callable():
    with pytest.raises(TypeError, match="parallelize_fn=3 is not callable"):
        ModelParallelStrategy(3)


def test_device_mesh_before_launch_says_to_launch():
    with pytest.raises(RuntimeError, match=r"call `fabric.launch\(\)` first"):
        _ = ModelParallelStrategy(parallelize).device_mesh


def test_same_script_under_lightning_ends_with_equal_weights(runs):
    for rank in runs["tp2"]:  # model_parallel_parity.train under each Fabric
        if rank["lightning_parity"] is None:
            pytest.skip("lightning is not installed")
        close(rank["parity"], rank["lightning_parity"], 1e-6)


def test_tensor_parallel_example_trains_under_fabric_run_on_four_processes(clean_env, tmp_path):
    out = run_example("-m", "fabric_kit", "run", "--devices", "4", "examples/fabric/tensor_parallel.py", "--tp", "2",
                      "--steps", "40", "--empty-init", "--checkpoint", tmp_path / "checkpoint", timeout=400)
    assert "mesh {'data_parallel': 2, 'tensor_parallel': 2} on 4 processes" in out
    assert number_after("step 40  loss", out) < 0.9 * number_after("(chance", out)
    assert (tmp_path / "checkpoint" / ".metadata").is_file()
