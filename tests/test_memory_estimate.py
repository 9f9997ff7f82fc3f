"""`estimate_memory` (fabric_kit/memory_estimate.py) against what real runs hold.

States: tests/memory_estimate_worker.py trains each of the three models of tests/helpers/memory_models.py for one
step on 2 gloo CPU processes, one run per strategy (DDP, FSDP, DeepSpeed ZeRO-3; FSDP also in bf16-true), and
records the bytes of each rank's own tensors; the estimate for that rank must be within 10%. Activations: torch's
profiler records the memory a real CPU forward allocates and still holds when it returns; with the input, which the
graph keeps too, that is what the estimate (on the meta device) must match within 25%.

Cost: the DDP and FSDP runs take a few seconds of CPU each; the DeepSpeed one as long, after the first DeepSpeed run
on a machine JIT-built its communication op (1-2 minutes on 2 cores, cached under ~/.cache/torch_extensions, as in
tests/strategies/test_deepspeed.py).
"""
import importlib.util
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.profiler import ProfilerActivity, profile

from fabric_kit.memory_estimate import estimate_memory, local_numel, parse_memory
from fabric_kit.strategies.fsdp.sharding import apply_activation_checkpointing
from tests.helpers.memory_models import MODELS, Block, tiny_transformer, transformer_input

WORKER = Path(__file__).with_name("memory_estimate_worker.py")
STATES = ("parameters", "buffers", "gradients", "master_weights", "optimizer_states")
needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="DeepSpeed is not installed: pip install 'fabric_kit[deepspeed]' "
                                            "--no-build-isolation")
RUNS = [("ddp", "32-true"), ("fsdp", "32-true"), ("fsdp", "bf16-true"),
        pytest.param("deepspeed_stage_3", "32-true", marks=needs_deepspeed)]
"""(strategy, precision): one 2-process run each. DeepSpeed's bf16 is not among them: on CPU its ZeRO-3 leaves batch
norm's buffers in float32 and the CNN's forward fails."""


@pytest.fixture(scope="module")
def measured(run_ranks, tmp_path_factory):
    """`measured(strategy, precision)`: what each rank of the worker held, run once per pair."""
    done = {}

    def get(strategy, precision="32-true"):
        if (strategy, precision) not in done:
            out = tmp_path_factory.mktemp(strategy)
            done[strategy, precision] = run_ranks([WORKER, strategy, precision, out], out, timeout=600)[1]
        return done[strategy, precision]

    return get


@pytest.mark.parametrize("strategy, precision", RUNS)
def test_states_per_rank_match_what_the_ranks_hold(measured, strategy, precision):
    for rank, held in enumerate(measured(strategy, precision)):
        for name, (factory, _) in MODELS.items():
            estimate = estimate_memory(factory, strategy=strategy, devices=2, precision=precision, rank=rank)
            real = held[name]
            predicted = {kind: getattr(estimate, kind) for kind in STATES}
            assert sum(predicted.values()) == pytest.approx(sum(real.values()), rel=0.10), (name, rank, real)
            parameters_and_optimizer = ("parameters", "master_weights", "optimizer_states")
            assert sum(predicted[k] for k in parameters_and_optimizer) == pytest.approx(
                sum(real[k] for k in parameters_and_optimizer), rel=0.10), (name, rank, predicted, real)
            for kind in STATES:
                assert predicted[kind] == pytest.approx(real[kind], rel=0.10), (name, rank, kind, predicted, real)


def test_sharded_states_are_smaller_than_replicated_ones(measured):
    """The comparison above can fail: the runs hold different amounts (the shards are about half, and half again
    in bfloat16)."""
    ddp, fsdp = measured("ddp")[0]["transformer"], measured("fsdp")[0]["transformer"]
    half = measured("fsdp", "bf16-true")[0]["transformer"]
    for kind in ("parameters", "optimizer_states"):
        assert 0.45 < fsdp[kind] / ddp[kind] < 0.55 and 0.45 < half[kind] / fsdp[kind] < 0.55


def held_after_forward(model, batch):
    """Bytes a real forward allocates and still holds when it returns (what autograd keeps for backward, and the
    output), plus the input's, which the graph keeps too."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        output = model(batch)  # held until the profile ends, and with it the graph
    del output
    return sum(event.self_cpu_memory_usage for event in profiler.key_averages()) + batch.nbytes


@pytest.mark.parametrize("name", list(MODELS))
def test_activations_match_a_real_forward(name):
    factory, sample_input = MODELS[name]
    torch.manual_seed(0)
    real = held_after_forward(factory(), sample_input())
    estimate = estimate_memory(factory, devices=2, sample_input=sample_input)
    assert estimate.batch_size == sample_input().shape[0]
    assert estimate.activations == pytest.approx(real, rel=0.25)


def test_checkpointed_activations_are_the_kept_inputs_and_one_block_recomputed():
    """With the blocks checkpointed, what forward keeps (measured with torch's checkpointing) plus what one block
    keeps when it runs again in backward (measured on a block alone)."""
    torch.manual_seed(0)
    model, tokens = tiny_transformer(), transformer_input()
    block_input = model.embedding(tokens).detach()
    one_block = held_after_forward(model.blocks[0], block_input) - block_input.nbytes  # its input is kept anyway
    apply_activation_checkpointing(model, lambda module: isinstance(module, Block))
    real = held_after_forward(model, tokens) + one_block
    estimate = estimate_memory(tiny_transformer, sample_input=transformer_input, activation_checkpointing=True)
    plain = estimate_memory(tiny_transformer, sample_input=transformer_input)
    assert estimate.activations == pytest.approx(real, rel=0.25)
    assert estimate.activations < 0.75 * plain.activations
    by_class = estimate_memory(tiny_transformer, sample_input=transformer_input, activation_checkpointing={Block})
    assert by_class.activations == estimate.activations


def test_largest_micro_batch_fits_the_memory_left_by_the_states():
    factory, sample_input = MODELS["mlp"]
    base = estimate_memory(factory, sample_input=sample_input)
    per_sample = base.activations / base.batch_size
    budget = base.states + int(per_sample * 100) + 1
    assert estimate_memory(factory, sample_input=sample_input, memory=budget).max_batch_size == 100
    assert estimate_memory(factory, sample_input=sample_input, memory=base.states // 2).max_batch_size == 0
    assert estimate_memory(factory, memory="1GiB").max_batch_size is None  # no sample input: states only


def test_precision_sets_the_dtypes_and_deepspeed_keeps_float32_masters():
    factory = MODELS["mlp"][0]
    full = estimate_memory(factory, strategy="ddp", devices=2)
    half = estimate_memory(factory, strategy="ddp", devices=2, precision="bf16-true")
    mixed = estimate_memory(factory, strategy="ddp", devices=2, precision="bf16-mixed")
    assert half.parameters * 2 == full.parameters and half.gradients * 2 == full.gradients
    assert (mixed.parameters, mixed.optimizer_states) == (full.parameters, full.optimizer_states)
    if importlib.util.find_spec("deepspeed") is not None:
        zero = estimate_memory(factory, strategy="deepspeed_stage_3", devices=2, precision="bf16-mixed")
        assert zero.parameters * 2 == pytest.approx(full.parameters / 2, abs=16)
        assert zero.master_weights == pytest.approx(full.parameters / 2, abs=16)
        assert zero.optimizer_states == pytest.approx(full.optimizer_states / 2, abs=16)


def test_row_and_flat_shards_follow_torch_chunk_and_deepspeed_padding():
    shape = torch.Size([65, 3])
    assert [local_numel(shape, "rows", 2, rank) for rank in range(2)] == [33 * 3, 32 * 3]
    assert [t.numel() for t in torch.empty(shape).chunk(4)] == [local_numel(shape, "rows", 4, r) for r in range(4)]
    assert [local_numel(shape, "rows", 70, rank) for rank in (64, 65, 69)] == [3, 0, 0]
    assert local_numel(shape, "flat", 2, 1) == 98 and local_numel(shape, "replicated", 2, 1) == 195


@given(shape=st.lists(st.integers(1, 70), min_size=1, max_size=3), world_size=st.integers(1, 9))
def test_every_element_is_held_by_exactly_one_rank_or_padded_once(shape, world_size):
    shape = torch.Size(shape)
    rows = [local_numel(shape, "rows", world_size, rank) for rank in range(world_size)]
    flat = [local_numel(shape, "flat", world_size, rank) for rank in range(world_size)]
    assert sum(rows) == shape.numel() and rows == sorted(rows, reverse=True)
    assert len(set(flat)) == 1 and 0 <= sum(flat) - shape.numel() < world_size


def test_unusable_arguments_are_refused_with_what_is_accepted():
    factory = MODELS["mlp"][0]
    with pytest.raises(ValueError, match="optimizer='lion'.*adamw"):
        estimate_memory(factory, optimizer="lion")
    with pytest.raises(ValueError, match="rank=2 is not a rank of 2"):
        estimate_memory(factory, devices=2, rank=2)
    with pytest.raises(ValueError, match="memory='80 apples'.*80GiB"):
        estimate_memory(factory, memory="80 apples")
    with pytest.raises(ValueError, match="strategy='ddpp'.*accepted"):
        estimate_memory(factory, strategy="ddpp")
    with pytest.raises(ValueError, match="not on the meta device"):
        estimate_memory(factory())
    with pytest.raises(NotImplementedError, match="parallelize_fn"):
        from fabric_kit.strategies.model_parallel import ModelParallelStrategy
        estimate_memory(factory, strategy=ModelParallelStrategy(parallelize_fn=lambda model, mesh: model))
    assert parse_memory("80GB") == 80 * 10**9 and parse_memory("1.5GiB") == 3 * 2**29 and parse_memory(7) == 7
