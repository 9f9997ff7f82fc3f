"""Pipeline parallelism (ModelParallelStrategy(pipeline_parallel_size=2)) with real CPU processes on gloo: PP = 2 x
FSDP2 = 2 and PP = 2 x TP = 2 on 4 processes, each with the gpipe, 1f1b and interleaved 1f1b schedules in the same
processes, against the same training on one process, and PP x FSDP2 with the stages a function returns (also
under interleaved 1F1B on the meta device); bf16-mixed under PP x TP; a checkpoint saved under PP x TP resumed
there, under FSDP2 x TP and plain FSDP (no pipeline) and, through `fabric consolidate`, on one process; the bad-input
errors.

tests/strategies/pipeline_parallel_worker.py runs every scenario of both 4-process layouts in one set of processes
("pp2tp2" first: it writes the checkpoint the others read), with test_model_parallel.py's 4-process layout (the
`model_parallel_processes` fixture of conftest.py); the one-process layout runs in this process.
"""
import pytest
import torch

from fabric_kit import Fabric
from fabric_kit.strategies import ModelParallelStrategy
from tests.helpers.examples import number_after, run_example
from tests.helpers.processes import as_one_process
from tests.strategies.model_parallel_model import GLOBAL_BATCH, SPLIT, Transformer, dataset, parallelize
from tests.strategies.pipeline_parallel_worker import SPLITS, loss_fn, single
from tests.strategies.test_model_parallel import close

LAYOUTS = ("pp2tp2", "pp2dp2")


@pytest.fixture(scope="module")
def runs(model_parallel_processes):
    """{layout: [what each rank saved]}; "pp2dp2" and "single" load the checkpoint "pp2tp2" saved, "single" also
    the one "pp2dp2" saved."""
    results = {layout: [rank[layout] for rank in model_parallel_processes["four"]] for layout in LAYOUTS}
    with as_one_process():
        results["single"] = [single(str(model_parallel_processes["four_out"]))]
    return results


@pytest.mark.parametrize("schedule", list(SPLITS))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_trains_like_one_process(runs, layout, schedule):
    reference = runs[layout][0]["reference"]
    for rank in runs[layout]:
        run = rank[schedule]
        torch.testing.assert_close(run["mean"], reference["losses"], atol=1e-5, rtol=0)
        torch.testing.assert_close(run["norms"], reference["norms"], atol=1e-5, rtol=0)  # over every stage
        close(run["weights"], reference["weights"], 1e-5)
    assert reference["losses"][-1] < 0.5 * reference["losses"][0]
    assert (reference["norms"] > 1.0).any()  # clipping at 1.0 changed some steps


def test_stages_returned_by_a_function_train_like_one_process_and_keep_the_whole_models_names(runs):
    ranks = runs["pp2dp2"]
    reference = ranks[0]["reference"]
    for rank in ranks:
        torch.testing.assert_close(rank["split_fn"]["mean"], reference["losses"], atol=1e-5, rtol=0)
        torch.testing.assert_close(rank["split_fn"]["norms"], reference["norms"], atol=1e-5, rtol=0)
        close(rank["split_fn"]["weights"], reference["weights"], 1e-5)
        assert rank["split_fn"]["held"] == rank["1f1b"]["held"]  # the same names as the cut at "blocks.1"
    assert {name.split(".")[0] for name in ranks[0]["split_fn"]["held"]} == {"embed", "blocks"}
    close(runs["single"][0]["fn_weights"], reference["weights"], 1e-5)  # its checkpoint, consolidated: every stage


def test_stages_a_function_returns_run_interleaved_from_the_meta_device_like_one_process(runs):
    ranks = runs["pp2dp2"]
    for rank in ranks:
        run = rank["split_fn_interleaved_meta"]
        reference = run["reference"]
        assert all(torch.isfinite(weight).all() for weight in run["initial"].values())
        torch.testing.assert_close(run["mean"], reference["losses"], atol=1e-5, rtol=0)
        torch.testing.assert_close(run["norms"], reference["norms"], atol=1e-5, rtol=0)
        close(run["weights"], reference["weights"], 1e-5)
        assert reference["losses"][-1] < 0.5 * reference["losses"][0]
    with torch.random.fork_rng():  # the weights a model created with storage starts from: not those materialised
        torch.manual_seed(0)
        created = Transformer().head.weight
    assert not torch.equal(ranks[0]["split_fn_interleaved_meta"]["initial"]["head.weight"], created)
    # rank 0 of the pipeline runs stages 0 and 2 (embed, block 1), rank 1 stages 1 and 3 (block 0, norm and head)
    first, last = ranks[0]["split_fn_interleaved_meta"]["held"], ranks[2]["split_fn_interleaved_meta"]["held"]
    assert {name.rsplit(".", 1)[0] for name in first} >= {"embed", "blocks.1.mlp.w1"}
    assert not any(name.startswith(("blocks.0.", "norm", "head")) for name in first)
    assert {name.split(".")[0] for name in last} == {"blocks", "norm", "head"}
    assert all(name.startswith("blocks.0.") for name in last if name.startswith("blocks"))


def test_bf16_mixed_under_the_pipeline_computes_in_bf16_and_hands_the_loss_float32(runs):
    reference = runs["pp2tp2"][0]["reference"]["losses"][:SPLIT]
    for rank, result in enumerate(rank["bf16"] for rank in runs["pp2tp2"]):
        assert result["computed"] == {torch.bfloat16}
        assert result["received"] == ({torch.float32} if rank >= 2 else set())  # the last stage runs the loss
        assert result["params"] == {torch.float32} and result["grads"] == {torch.float32}
        torch.testing.assert_close(result["mean"], reference, atol=0.05, rtol=0)  # within bf16's rounding


def test_a_loss_scaling_precision_is_refused_under_a_pipeline():
    from fabric_kit.plugins import MixedPrecision
    strategy = ModelParallelStrategy(parallelize, pipeline_parallel_size=2, pipeline_split=["blocks.1"],
                                     precision=MixedPrecision("16-mixed", "cpu"))
    with pytest.raises(ValueError, match=r"precision='16-mixed' scales the loss, which a pipeline schedule cannot"):
        strategy.setup_module(Transformer())


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_returned_loss_is_the_same_on_every_rank_of_a_pipeline(runs, layout):
    ranks = runs[layout]
    for schedule in SPLITS:
        for first, last in ((0, 2), (1, 3)):  # the pipelines: mesh (pp, dp, tp) = (2, 2, 1) or (2, 1, 2)
            assert torch.equal(ranks[first][schedule]["returned"], ranks[last][schedule]["returned"])
    if layout == "pp2tp2":  # one data-parallel rank: the batch's loss on all four
        assert all(torch.equal(r["1f1b"]["returned"], ranks[0]["1f1b"]["returned"]) for r in ranks)
    else:  # two: each its own half of the batch
        assert not torch.equal(ranks[0]["1f1b"]["returned"], ranks[1]["1f1b"]["returned"])


def test_mesh_puts_the_pipeline_outermost(runs):
    names = ("pipeline_parallel", "data_parallel", "tensor_parallel")
    assert runs["pp2tp2"][0]["mesh"] == (names, (2, 1, 2))
    assert runs["pp2dp2"][0]["mesh"] == (names, (2, 2, 1))


def test_each_rank_holds_only_its_stages(runs):
    ranks = runs["pp2tp2"]
    first, last = ranks[0]["1f1b"]["held"], ranks[2]["1f1b"]["held"]
    assert {name.split(".")[0] for name in first} == {"embed", "blocks"}
    assert all(name.startswith("blocks.0.") for name in first if name.startswith("blocks"))
    assert {name.split(".")[0] for name in last} == {"blocks", "norm", "head"}
    assert all(name.startswith("blocks.1.") for name in last if name.startswith("blocks"))
    # interleaved: 4 stages (embed | block 0 | block 1 | norm, head), rank 0 of the pipeline runs stages 0 and 2
    assert {n.rsplit(".", 1)[0] for n in ranks[0]["interleaved_1f1b"]["held"]} >= {"embed", "blocks.1.mlp.w1"}
    assert not any(n.startswith(("blocks.0.", "head")) for n in ranks[0]["interleaved_1f1b"]["held"])


def test_meta_device_init_materialises_only_the_stage(runs):
    ranks = [rank["meta"] for rank in runs["pp2tp2"]]
    for rank in ranks:
        assert not rank["meta_left"] and rank["finite"]
    assert ranks[0]["held"] == runs["pp2tp2"][0]["1f1b"]["held"] and "embed.weight" not in ranks[2]["held"]
    assert torch.equal(ranks[0]["embed"], ranks[1]["embed"])  # a plain tensor: equal over the stage's TP ranks


def test_checkpoint_saved_under_pipeline_resumes_there_and_on_one_process(runs):
    reference = runs["pp2tp2"][0]["reference"]
    for resumed in [rank["resumed"] for rank in runs["pp2tp2"]] + [runs["single"][0]]:
        assert resumed["step"] == SPLIT
        torch.testing.assert_close(resumed["returned"], reference["losses"][SPLIT:], atol=1e-5, rtol=0)
        close(resumed["weights"], reference["weights"], 1e-5)


@pytest.mark.parametrize("entry", ["dp2tp2_from_pp", "fsdp_from_pp"])
def test_checkpoint_saved_under_pipeline_loads_into_fsdp2_x_tp_and_plain_fsdp(runs, entry):
    reference = runs["pp2tp2"][0]["reference"]
    for rank in runs["pp2dp2"]:
        resumed = rank[entry]
        assert resumed["step"] == SPLIT and resumed["samples"] == SPLIT * GLOBAL_BATCH
        torch.testing.assert_close(resumed["mean"], reference["losses"][SPLIT:], atol=1e-5, rtol=0)
        close(resumed["weights"], reference["weights"], 1e-5)


def test_bad_pipeline_input_errors_name_the_value_and_what_is_accepted(runs):
    errors = runs["pp2tp2"][0]["errors"]
    assert "pipeline split point 'blocks.9' names no module of Transformer" in errors["missing_module"]
    assert "blocks.0, blocks.1, norm, head" in errors["missing_module"]
    assert "pipeline_microbatches=2 does not divide the batch of 3 samples" in errors["microbatches"]
    assert "a pipelined model cannot be called" in errors["model_call"]
    assert "fabric.forward_backward(model, x, y, loss_fn=loss_fn)" in errors["model_call"]
    assert "3 pipeline stages cannot be spread over pipeline_parallel_size=2" in errors["fn_count"]
    assert "pipeline_split function 'a_tensor' returned stage 1 as a Tensor" in errors["fn_not_a_module"]
    assert "stage 1's parameter 'norm.weight' is not one of the model's" in errors["fn_copies"]
    assert "the model's parameter(s) norm.weight, head.weight are in no stage" in errors["fn_missing"]
    for name in ("missing_module", "microbatches", "fn_count", "fn_not_a_module", "fn_copies", "fn_missing"):
        assert "accepted" in errors[name]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"pipeline_schedule": "zb"}, r"pipeline_schedule='zb' is not a schedule; accepted: gpipe, 1f1b, "
                                  r"interleaved_1f1b"),
    ({"pipeline_split": ["blocks.1", "norm"]}, r"3 pipeline stages cannot be spread over pipeline_parallel_size=2"),
    ({"pipeline_schedule": "interleaved_1f1b"}, r"runs several stages per rank, but 2 stages over 2 ranks give "
                                                r"each one; accepted: at least 4 stages"),
    ({"pipeline_split": ["blocks.0", "blocks.1", "norm"]}, r"pipeline_schedule='1f1b' runs one stage per rank, but "
                                                           r"4 stages over 2 ranks give each 2"),
    ({"pipeline_microbatches": 0}, r"pipeline_microbatches=0 is not valid; accepted: a positive int"),
    ({"pipeline_split": "blocks.1"}, r"pipeline_split='blocks.1' is one string; accepted: a list"),
    ({"save_distributed_checkpoint": False}, r"save_distributed_checkpoint=False with pipeline_parallel_size=2"),
])
def test_bad_pipeline_arguments_are_refused_at_construction(kwargs, message):
    arguments = {"pipeline_parallel_size": 2, "pipeline_split": ["blocks.1"], **kwargs}
    with pytest.raises((ValueError, TypeError), match=message):
        ModelParallelStrategy(parallelize, **arguments)


def test_a_pipeline_size_that_does_not_divide_the_world_is_refused_before_any_process_group(clean_env):
    strategy = ModelParallelStrategy(parallelize, pipeline_parallel_size=3, pipeline_split=["blocks.0", "blocks.1"])
    Fabric(accelerator="cpu", devices=2, strategy=strategy)
    with pytest.raises(ValueError, match=r"pipeline_parallel_size=3 does not divide the world size 2; accepted: a "
                                         r"divisor of 2"):
        strategy.setup_environment()


@pytest.mark.parametrize(("split", "message"), [
    (["blocks", "blocks.1"], r"pipeline split point 'blocks' contains another split point"),
    (["head", "blocks.1"], r"are not in the model's order"),
    (["embed"], r"are not in the model's order after its first module"),
])
def test_split_points_out_of_order_or_nested_are_refused(split, message):
    from fabric_kit.strategies.pipeline import stage_ranges
    with pytest.raises(ValueError, match=message):
        stage_ranges(Transformer(), split)


def test_forward_backward_without_a_pipeline_is_the_plain_forward_loss_and_backward(clean_env):
    fabric = Fabric(accelerator="cpu", devices=1)
    torch.manual_seed(0)
    model, plain = fabric.setup_module(Transformer()), Transformer()
    plain.load_state_dict(model.state_dict())
    tokens = dataset().tensors[0][:4]
    loss = fabric.forward_backward(model, tokens, tokens, loss_fn=loss_fn)
    expected = loss_fn(plain(tokens), tokens)
    expected.backward()
    assert not loss.requires_grad and torch.equal(loss, expected.detach())
    for (name, p), q in zip(model.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=0, rtol=0, msg=name)


def test_pipeline_parallel_example_trains_under_fabric_run_on_four_processes(clean_env, tmp_path):
    out = run_example("-m", "fabric_kit", "run", "--devices", "4", "examples/fabric/pipeline_parallel.py", "--pp", "2",
                      "--steps", "40", "--empty-init", "--checkpoint", tmp_path / "checkpoint", timeout=400)
    assert ("mesh {'pipeline_parallel': 2, 'data_parallel': 2, 'tensor_parallel': 1} on 4 processes, 2 stages, "
            "schedule 1f1b") in out
    assert number_after("step 40  loss", out) < 0.9 * number_after("(chance", out)
    assert (tmp_path / "checkpoint" / ".metadata").is_file()
