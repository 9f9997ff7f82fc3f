"""The Trainer's profilers: each writes its report (and PyTorchProfiler its Chrome trace) per rank for a fit on 2
real gloo processes, with Lightning's action names; `fabric.profile()` writes the same trace for a raw loop; and
`profiler=None` puts no profiler call on the per-batch path (counted)."""
import json
import re
import sys
from pathlib import Path

import pytest
import torch

import loops as L
from loops.demos import BoringModel
from loops.profilers import AdvancedProfiler, PassThroughProfiler, Profiler, PyTorchProfiler, SimpleProfiler

SCRIPT = Path(__file__).parent / "scripts" / "ddp_profilers.py"
STEPS = ["[Strategy]DDPStrategy.training_step", "[Strategy]DDPStrategy.validation_step",
         "[Strategy]DDPStrategy.backward"]
ACTIONS = [*STEPS, "run_training_epoch", "run_training_batch", "[LightningModule]BoringModel.optimizer_step",
           "[LightningModule]BoringModel.configure_optimizers",
           "[Callback]Counter.on_train_batch_end", "[_TrainingEpochLoop].train_dataloader_next",
           "[_EvaluationLoop].val_next"]


def _trace_names(directory, worker):
    traces = sorted(directory.glob(f"{worker}.*.pt.trace.json"))
    assert len(traces) == 1, sorted(p.name for p in directory.iterdir())
    return {event.get("name") for event in json.loads(traces[0].read_text())["traceEvents"]}


def test_each_profiler_reports_per_rank_on_two_processes(run_ranks, tmp_path):
    proc, _ = run_ranks([SCRIPT, tmp_path], tmp_path, timeout=300)
    for rank in (0, 1):
        simple = (tmp_path / "simple" / f"fit-perf-{rank}.txt").read_text()  # the log dir: default_root_dir
        assert simple.startswith("FIT Profiler Report")
        for action in ACTIONS:
            assert f"|  {action} " in simple, action
        calls = {m[1]: int(m[2]) for m in re.finditer(r"\|  (\S+)\s*\t\|  \S+\s*\t\|  (\d+)", simple)}
        assert calls["[Strategy]DDPStrategy.training_step"] == 3 and calls["[_EvaluationLoop].val_next"] == 2
        assert calls["[Callback]Counter.on_train_batch_end"] == 3

        advanced = (tmp_path / "advanced" / f"fit-perf-{rank}.txt").read_text()
        assert advanced.startswith("FIT Profiler Report")
        for action in ACTIONS:
            assert f"Profile stats for: {action} rank: {rank}" in advanced, action
        assert "Ordered by: cumulative time" in advanced and "(training_step)" in advanced  # BoringModel's, by cProfile

        table = (tmp_path / "pytorch" / f"fit-perf-{rank}.txt").read_text()
        assert table.startswith("FIT Profiler Report") and "CPU Mem" in table  # memory is recorded
        for step in STEPS:
            assert f"[pl][profile]{step}" in table
        names = _trace_names(tmp_path / "pytorch", f"fit-perf-{rank}")
        assert {f"[pl][profile]{action}" for action in ACTIONS} <= names
        assert {"[memory]", "[pl][module]torch.nn.modules.linear.Linear: layer", "gloo:all_reduce"} <= names

        raw = _trace_names(tmp_path / "raw", f"profile-{rank}")  # fabric.profile(): the same kind of trace
        assert {"[memory]", "aten::addmm", "gloo:all_reduce"} <= raw
    # without a filename the report is printed, by local rank 0 only (rank 1 shares this stdout)
    assert proc.stdout.count("FIT Profiler Report") == 1
    assert not (tmp_path / "printed").exists() or not list((tmp_path / "printed").glob("*.txt"))


def _profiler_calls_per_step(profiler, steps):
    """Calls made per training step by code of loops.profilers or by the Trainer's profiling wrappers (the
    difference between fits of 2N and N steps, so set-up and once-per-epoch calls cancel)."""
    import loops.profilers
    import loops.trainer.hooks

    package = str(Path(loops.profilers.__file__).parent)
    hooks_file = loops.trainer.hooks.__file__

    def count(n):
        calls = 0

        def watch(frame, event, arg):
            nonlocal calls
            code = frame.f_code
            if event == "call" and (code.co_filename.startswith(package) or (
                    code.co_filename == hooks_file and code.co_name in ("run", "_profiled_fetches"))):
                calls += 1

        trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=n, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                            limit_val_batches=0, profiler=profiler)
        model = BoringModel()
        sys.setprofile(watch)
        try:
            trainer.fit(model)
        finally:
            sys.setprofile(None)
        return calls

    return (count(2 * steps) - count(steps)) / steps


def test_no_profiler_adds_no_call_per_step():
    assert _profiler_calls_per_step(None, 4) == 0
    # the counter sees profiling where there is some: a profiler that records nothing is still called
    assert _profiler_calls_per_step(_Silent(), 4) > 0


class _Silent(Profiler):
    def start(self, action_name):
        pass

    def stop(self, action_name):
        pass


def test_plain_hook_lists_without_a_profiler():
    """profiler=None: the dispatcher hands out the bound methods and the set-up module themselves."""
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model := BoringModel())
    assert type(trainer.profiler) is PassThroughProfiler
    hooks = trainer.run_state.hooks
    assert hooks.profiler is None and hooks.method("optimizer_step") == model.optimizer_step
    assert hooks.steps(trainer.run_state.fabric_module) is trainer.run_state.fabric_module
    loader = [1, 2]
    assert hooks.batches("fetch", loader) is loader


def test_trainer_profiler_argument():
    assert isinstance(L.Trainer(accelerator="cpu", devices=1, profiler="Simple").profiler, SimpleProfiler)
    assert isinstance(L.Trainer(accelerator="cpu", devices=1, profiler="advanced").profiler, AdvancedProfiler)
    assert isinstance(L.Trainer(accelerator="cpu", devices=1, profiler="pytorch").profiler, PyTorchProfiler)
    mine = _Silent()
    assert L.Trainer(accelerator="cpu", devices=1, profiler=mine).profiler is mine
    with pytest.raises(ValueError, match=r"profiler='fast' is not a profiler: pass one of \['advanced', 'pytorch'"):
        L.Trainer(accelerator="cpu", devices=1, profiler="fast")
    with pytest.raises(ValueError, match="profiler='xla' is not provided"):
        L.Trainer(accelerator="cpu", devices=1, profiler="xla")
    with pytest.raises(ValueError, match="barebones=True turns off .*profiling"):
        L.Trainer(accelerator="cpu", devices=1, barebones=True, profiler="simple")


def test_simple_profiler_rejects_unbalanced_actions():
    profiler = SimpleProfiler()
    profiler.start("a")
    with pytest.raises(ValueError, match="Attempted to start a which has already started"):
        profiler.start("a")
    with pytest.raises(ValueError, match=r"action \(b\) which was never started"):
        profiler.stop("b")


def test_advanced_profiler_gives_the_outer_action_back_its_recording():
    profiler = AdvancedProfiler(line_count_restriction=50)

    def after_inner():
        return sum(range(10))

    with profiler.profile("outer"):
        with profiler.profile("inner"):
            pass
        after_inner()
    report = profiler.summary()
    outer = report.split("Profile stats for: outer")[1].split("Profile stats for: inner")[0]
    assert "(after_inner)" in outer


def test_standalone_report_goes_to_a_file_or_stdout(tmp_path, capsys):
    profiler = SimpleProfiler(dirpath=tmp_path, filename="solo", extended=False)
    with profiler.profile("work"):
        pass
    profiler.describe()
    report = (tmp_path / "solo.txt").read_text()
    assert report.startswith("Profiler Report") and "|  work" in report and "Num calls" not in report
    printed = SimpleProfiler()
    with printed.profile("work"):
        pass
    printed.describe()
    assert "|  work" in capsys.readouterr().out


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"sort_by_key": "speed"}, ValueError, "sort_by_key='speed' is not one of"),
    ({"table_kwargs": {"sort_by": "count"}}, KeyError, r"\['sort_by'\] are not arguments of EventList.table"),
    ({"emit_nvtx": True}, ValueError, "emit_nvtx=True. is not supported"),
    ({"schedule": 3}, ValueError, "schedule=3 is not callable"),
    ({"with_speed": True}, TypeError, r"\['with_speed'\], which torch.profiler.profile does not take"),
])
def test_pytorch_profiler_checks_its_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        PyTorchProfiler(**kwargs)


@pytest.mark.filterwarnings("ignore:Warning. Profiler clears events")
def test_pytorch_profiler_schedule_writes_a_trace_per_window(tmp_path):
    """A user's schedule: the profiler steps after each training step, and each active window ends in a trace."""
    schedule = torch.profiler.schedule(wait=0, warmup=1, active=1, repeat=2)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=4, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path, profiler=PyTorchProfiler(filename="win", schedule=schedule))
    trainer.fit(BoringModel())
    assert len(list(tmp_path.glob("fit-win.*.pt.trace.json"))) == 2
    assert (tmp_path / "fit-win.txt").read_text().startswith("FIT Profiler Report")


def test_profilers_pickle_without_their_recordings(tmp_path):
    """A spawned process receives the Trainer, and so its profiler: settings go, open recordings and files stay."""
    import pickle

    advanced = AdvancedProfiler(dirpath=tmp_path, filename="a", line_count_restriction=3)
    advanced.start("running")
    copy = pickle.loads(pickle.dumps(advanced))
    advanced.stop("running")
    assert copy.profiled_actions == {} and copy.line_count_restriction == 3 and copy.filename == "a"
    torch_profiler = PyTorchProfiler(dirpath=tmp_path, row_limit=7)
    torch_profiler.start("running")
    copy = pickle.loads(pickle.dumps(torch_profiler))
    torch_profiler.teardown(None)
    assert copy.profiler is None and copy._row_limit == 7


def test_each_stage_reports_under_its_own_name(tmp_path):
    """validate / test / predict: `<stage>-<filename>.txt` in the log dir, with each loop's step and fetch actions."""
    profiler = SimpleProfiler(filename="perf")
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=2, limit_test_batches=2,
                        limit_predict_batches=2, default_root_dir=tmp_path, profiler=profiler)
    model = BoringModel()
    trainer.validate(model, verbose=False)
    trainer.test(model, verbose=False)
    trainer.predict(model)
    expected = {"validate": ["[Strategy]SingleDeviceStrategy.validation_step", "[_EvaluationLoop].val_next"],
                "test": ["[Strategy]SingleDeviceStrategy.test_step", "[_EvaluationLoop].test_next"],
                "predict": ["[Strategy]SingleDeviceStrategy.predict_step", "[_PredictionLoop].predict_next"]}
    for stage, actions in expected.items():
        report = (tmp_path / f"{stage}-perf.txt").read_text()
        assert report.startswith(f"{stage.upper()} Profiler Report")
        for action in actions:
            assert f"|  {action} " in report, (stage, action)
