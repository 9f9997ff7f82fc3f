"""DeepSpeed ZeRO stages 1-3 with 2 real CPU processes on gloo, against DDP; configuration; a missing DeepSpeed.

The multi-process tests run tests/strategies/deepspeed_worker.py once, every strategy in turn in the same 2
processes (this process's pytest is not a rank), and assert on what the ranks saved. Cost: the first DeepSpeed run on
a machine JIT-builds DeepSpeed's small shared-memory communication op (about 1-2 minutes on 2 cores; cached in the
folder conftest.py names), then each strategy takes a few seconds of CPU.
"""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from fabric_kit.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision
from tests.helpers.processes import TORCHRUN_TWO

WORKER = Path(__file__).with_name("deepspeed_worker.py")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fabric" / "deepspeed_zero.py"
STAGES = ["deepspeed_stage_1", "deepspeed_stage_2", "deepspeed_stage_3"]
SPLIT = 4
DDP_TOLERANCE = 1e-4
"""ZeRO reduces flattened, partitioned gradients in another order than DDP's buckets: float32 rounding only."""

needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="DeepSpeed is not installed: pip install 'fabric_kit[deepspeed]' "
                                            "--no-build-isolation")
# The first run may include building DeepSpeed's op; torch.distributed rendezvous and imports on a busy machine.
TIMEOUT = 600


@pytest.fixture(scope="module")
def runs(run_ranks, tmp_path_factory):
    """`runs(strategy)`: what each rank of the worker recorded for `strategy` (ddp or a stage), from the one run of
    the worker that the first call starts."""
    done = []

    def get(strategy):
        if not done:
            out = tmp_path_factory.mktemp("runs")
            done.extend(run_ranks([WORKER, out, "ddp", *STAGES], out, timeout=TIMEOUT)[1])
        return [rank[strategy] for rank in done]

    return get


@needs_deepspeed
@pytest.mark.parametrize("strategy", STAGES)
def test_resumed_run_continues_the_uninterrupted_one(runs, strategy):
    for rank in runs(strategy):
        uninterrupted = rank["uninterrupted"]
        assert rank["before_save"] == pytest.approx(uninterrupted[:SPLIT], abs=1e-6)
        # The resumed model started from other weights: everything came back from the checkpoint.
        assert rank["resumed"] == pytest.approx(uninterrupted[SPLIT:], abs=1e-6)
        assert rank["loaded_step"] == SPLIT and rank["remainder"] == {"note": "kept"}
        assert uninterrupted[-1] < uninterrupted[0] - 0.5  # it learns
        assert all(b < a for a, b in zip(uninterrupted, uninterrupted[1:], strict=False))


@needs_deepspeed
@pytest.mark.parametrize("strategy", STAGES)
def test_full_unpickler_still_loads_an_intact_checkpoint(runs, strategy):
    for rank in runs(strategy):
        assert rank["full_unpickler"] == pytest.approx(rank["resumed"][:1], abs=1e-6)


@needs_deepspeed
@pytest.mark.parametrize("kind", ["model_states", "optim_states"])
@pytest.mark.parametrize("strategy", STAGES)
def test_crafted_checkpoint_file_is_refused_and_runs_nothing(runs, strategy, kind):
    """A file of the checkpoint replaced by a pickle that creates a marker when unpickled (manifest updated):
    default fabric.load refuses it on every rank, naming the file, and the marker never appears."""
    ranks = runs(strategy)
    out = Path(ranks[0]["out_dir"])
    for rank in ranks:
        refused = rank[f"crafted_{kind}"]
        assert refused != "loaded" and refused["error"] == "UnsafeCheckpointError", refused
        assert refused["path"].endswith(f"{kind}.pt") and "weights_only=False" in refused["message"]
    marker = out / f"marker_{kind}"
    assert not marker.exists()
    # The crafted file is live: the full unpickler runs its code.
    torch.load(Path(ranks[0][f"crafted_{kind}"]["path"]), weights_only=False)
    assert marker.exists()


@needs_deepspeed
@pytest.mark.parametrize("strategy", STAGES)
def test_losses_match_ddp(runs, strategy):
    """Plain steps, and steps of two micro-batches: under stage 1 the first inside `no_backward_sync` (gradients
    summed locally, reduced once), under stages 2 and 3 DeepSpeed's gradient_accumulation_steps."""
    for rank, ddp in zip(runs(strategy), runs("ddp"), strict=False):
        assert rank["uninterrupted"] == pytest.approx(ddp["uninterrupted"], abs=DDP_TOLERANCE)
        assert rank["accumulated"] == pytest.approx(ddp["accumulated"], abs=DDP_TOLERANCE)
        # fabric.accumulate: DDP's no_sync there, the engine's own accumulation boundary here
        assert rank["accumulated_items"] == pytest.approx(ddp["accumulated_items"], abs=DDP_TOLERANCE)
        assert rank["accumulated_items"][-1] < rank["accumulated_items"][0]


@needs_deepspeed
@pytest.mark.parametrize("strategy", STAGES)
def test_checkpoint_is_a_verified_directory_of_the_engine_files(runs, strategy):
    files = set(runs(strategy)[0]["checkpoint_files"])
    assert "fabric_kit_manifest.json" in files and "checkpoint/zero_pp_rank_1_mp_rank_00_optim_states.pt" in files
    if strategy == "deepspeed_stage_3":  # every rank writes its part of the model
        assert {"checkpoint/zero_pp_rank_0_mp_rank_00_model_states.pt",
                "checkpoint/zero_pp_rank_1_mp_rank_00_model_states.pt"} <= files
    else:
        assert "checkpoint/mp_rank_00_model_states.pt" in files


@needs_deepspeed
@pytest.mark.parametrize("strategy", ["deepspeed_stage_2", "deepspeed_stage_3"])
def test_no_backward_sync_refused_where_gradients_are_partitioned(runs, strategy):
    stage = strategy[-1]
    for rank in runs(strategy):
        message = rank["no_sync_error"]
        assert f"ZeRO stage {stage}" in message and "gradient_accumulation_steps=N" in message


def test_missing_deepspeed_names_the_extra(run_ranks):
    """Simulate an environment without DeepSpeed: `import deepspeed` fails there."""
    code = ("import sys; sys.modules['deepspeed'] = None\n"
            "from fabric_kit import Fabric\n"
            "Fabric(accelerator='cpu', devices=1, strategy='deepspeed_stage_2')")
    proc = run_ranks(["-c", code], check=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError") and "pip install 'fabric_kit[deepspeed]'" in last
    assert "--no-build-isolation" in last


@needs_deepspeed
def test_fabric_kit_never_imports_deepspeed_before_setup(run_ranks):
    code = ("import sys\n"
            "from fabric_kit import Fabric\n"
            "import fabric_kit.strategies.deepspeed\n"
            "Fabric(accelerator='cpu', devices=1, strategy='deepspeed')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'deepspeed'))")
    proc = run_ranks(["-c", code], check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@needs_deepspeed
def test_example_runs_under_fabric_run_and_resumes_under_torchrun(run_ranks, tmp_path):
    checkpoint = tmp_path / "checkpoint"
    tiny = ["--width", "16", "--layers", "1", "--checkpoint", checkpoint]
    proc = run_ranks(["-m", "fabric_kit", "run", "--devices", "2", "--strategy", "deepspeed_stage_2", EXAMPLE,
                      "--steps", "3", *tiny], check=False, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"saved {checkpoint} at step 3" in proc.stdout
    proc = run_ranks([*TORCHRUN_TWO, EXAMPLE, "--strategy", "deepspeed_stage_2", "--steps", "2", *tiny],
                     check=False, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from {checkpoint} at step 3" in proc.stdout and f"saved {checkpoint} at step 5" in proc.stdout


# -- configuration, in this process (no engine is built) ---------------------------------------------------------
def _strategy(**kwargs):
    from fabric_kit.strategies.deepspeed import DeepSpeedStrategy
    return DeepSpeedStrategy(**kwargs)


@needs_deepspeed
@pytest.mark.parametrize(("name", "zero"), [
    ("deepspeed", {"stage": 2}),
    ("deepspeed_stage_1", {"stage": 1}),
    ("deepspeed_stage_2", {"stage": 2}),
    ("deepspeed_stage_2_offload", {"stage": 2, "offload_optimizer": {"device": "cpu"}}),
    ("deepspeed_stage_3", {"stage": 3}),
    ("deepspeed_stage_3_offload", {"stage": 3, "offload_optimizer": {"device": "cpu"},
                                   "offload_param": {"device": "cpu"}}),
])
def test_presets(clean_env, name, zero):
    from fabric_kit import Fabric
    fabric = Fabric(accelerator="cpu", devices=1, strategy=name)
    assert fabric.strategy.config == {"zero_optimization": zero, "train_micro_batch_size_per_gpu": 1,
                                      "zero_allow_untested_optimizer": True}


@needs_deepspeed
def test_user_config_dict_or_json_file_with_arguments(tmp_path):
    config = {"zero_optimization": {"stage": 3}, "train_batch_size": 8, "gradient_clipping": 1.0}
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    for given in (config, str(path), path):
        strategy = _strategy(config=given, gradient_accumulation_steps=2)
        # The config decides the stage; no micro batch size is invented next to train_batch_size.
        assert strategy.config == {**config, "gradient_accumulation_steps": 2, "zero_allow_untested_optimizer": True}
        assert strategy.zero_stage == 3
    assert config == {"zero_optimization": {"stage": 3}, "train_batch_size": 8, "gradient_clipping": 1.0}
    assert _strategy(config={}).zero_stage == 0  # a config without ZeRO section means DeepSpeed's default
    assert _strategy(micro_batch_size=4).config["train_micro_batch_size_per_gpu"] == 4


@needs_deepspeed
@pytest.mark.parametrize(("kwargs", "words"), [
    ({"config": {"zero_optimization": {"stage": 3}}, "stage": 2}, ["zero_optimization.stage=3", "2"]),
    ({"config": {"gradient_clipping": 1.0}, "gradient_clipping": 0.5}, ["gradient_clipping=1.0", "0.5"]),
    ({"stage": 4}, ["stage=4", "0, 1, 2, 3"]),
    ({"stage": 2, "offload_parameters": True}, ["offload_parameters=True", "stage 3"]),
    ({"config": 3}, ["config=3", "dict", "JSON"]),
])
def test_bad_arguments_are_named(kwargs, words):
    with pytest.raises((ValueError, TypeError)) as error:
        _strategy(**kwargs)
    assert all(word in str(error.value) for word in words)


@needs_deepspeed
def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        _strategy(config=tmp_path / "nope.json")


@needs_deepspeed
@pytest.mark.parametrize(("precision", "config", "section", "dtype"), [
    (MixedPrecision("bf16-mixed", "cpu"), {}, "bf16", torch.bfloat16),
    (HalfPrecision("bf16-true"), {}, "bf16", torch.bfloat16),
    (MixedPrecision("16-mixed", "cpu"), {"fp16": {"loss_scale": 0}}, "fp16", torch.float16),
    (Precision(), {"bf16": {"enabled": True}}, "bf16", torch.bfloat16),  # 32: the config's section stands
])
def test_precision_becomes_the_config_section(precision, config, section, dtype):
    from fabric_kit.strategies.deepspeed import DeepSpeedPrecision, _apply_precision
    result = _apply_precision(config, precision)
    assert config[section]["enabled"] is True
    assert isinstance(result, DeepSpeedPrecision) and result.dtype == dtype
    model = torch.nn.Linear(2, 2)
    assert result.convert_module(model).weight.dtype == torch.float32  # DeepSpeed casts it, after its master copy
    assert result.convert_input(torch.ones(1)).dtype == dtype and result.convert_output(torch.ones(1, dtype=dtype)
                                                                                        ).dtype == torch.float32


@needs_deepspeed
def test_precision_32_without_half_section_stays():
    from fabric_kit.strategies.deepspeed import DeepSpeedPrecision, _apply_precision
    config = {}
    precision = DeepSpeedPrecision("32-true")
    assert _apply_precision(config, precision) is precision and config == {}


@needs_deepspeed
@pytest.mark.parametrize(("precision", "config", "words"), [
    (DoublePrecision(), {}, ["64-true", "bf16-mixed"]),
    (MixedPrecision("bf16-mixed", "cpu"), {"fp16": {"enabled": True}}, ["bf16-mixed", "fp16"]),
])
def test_precision_conflicts_are_named(precision, config, words):
    from fabric_kit.strategies.deepspeed import _apply_precision
    with pytest.raises(ValueError) as error:
        _apply_precision(config, precision)
    assert all(word in str(error.value) for word in words)


@needs_deepspeed
@pytest.mark.parametrize("strategy", STAGES)
def test_clip_gradients_clips_through_the_engine_and_returns_the_norm(runs, strategy):
    """The norms are those torch's clipping returns under DDP, and the clipped steps (then the unclipped ones) train
    as DDP's do: the engine clipped exactly the steps clip_gradients was called for."""
    from tests.strategies.deepspeed_worker import MAX_NORM
    for rank, ddp in zip(runs(strategy), runs("ddp"), strict=False):
        assert min(ddp["clipped"]["norms"]) > 2 * MAX_NORM  # so clipping changes every clipped step
        assert rank["clipped"]["norms"] == pytest.approx(ddp["clipped"]["norms"], abs=DDP_TOLERANCE)
        assert rank["clipped"]["losses"] == pytest.approx(ddp["clipped"]["losses"], abs=DDP_TOLERANCE)


@needs_deepspeed
@pytest.mark.parametrize(("strategy", "kwargs", "error", "words"), [
    ({"gradient_clipping": 1.0}, {"max_norm": 0.5}, ValueError, ["max_norm=0.5", "gradient_clipping=1.0"]),
    ({}, {"max_norm": 0.5, "norm_type": 1.0}, ValueError, ["norm_type=1.0", "2-norm only"]),
    ({}, {"clip_val": 0.5}, RuntimeError, ["clip_val=0.5", "max_norm=..."]),
])
def test_clip_gradients_refuses_what_deepspeed_cannot_do(clean_env, strategy, kwargs, error, words):
    from fabric_kit import Fabric
    from fabric_kit.strategies.deepspeed import DeepSpeedStrategy
    fabric = Fabric(accelerator="cpu", devices=1, strategy=DeepSpeedStrategy(**strategy))
    model = torch.nn.Linear(2, 2)
    with pytest.raises(error) as raised:
        fabric.clip_gradients(model, torch.optim.SGD(model.parameters(), lr=0.1), **kwargs)
    assert all(word in str(raised.value) for word in words)
