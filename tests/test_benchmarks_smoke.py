"""The benchmarks that no other test runs still run: ddp_scaling on 1 and 2 processes (ours and raw torchrun + DDP,
one step each, the 1-process runs in this process), checkpoint_io on a tiny state, model_parallel on a tiny
transformer (one round), accumulation on 2 processes (2 windows, one round), throughput's figures next to
Lightning's, and gpu_step's model and its skip on machines without CUDA. No timing is asserted."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

from benchmarks import checkpoint_io, ddp_scaling, gpu_step
from tests.helpers.processes import as_one_process, free_port

ROOT = Path(gpu_step.__file__).resolve().parents[1]


def test_ddp_scaling_runs_every_case(clean_env, monkeypatch, capsys):
    """One step each. The 2-process runs are launched as the benchmark launches them (torchrun, `fabric run`); the
    1-process ones run their worker in this process, raw DDP on a process group of one that it destroys: launched,
    they would start two more launchers and two more interpreters, about as long again."""
    launched = ddp_scaling.launch

    def launch(kind, processes, steps):
        if processes > 1:
            return launched(kind, processes, steps)
        group_of_one = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "LOCAL_RANK": "0",
                        "WORLD_SIZE": "1"} if kind == "raw" else {}
        with as_one_process(), mock.patch.dict(os.environ, group_of_one):
            return ddp_scaling.worker(kind, steps)

    monkeypatch.setattr(ddp_scaling, "launch", launch)
    ddp_scaling.main(["--steps", "1"])
    out = capsys.readouterr().out
    assert not torch.distributed.is_initialized()
    rows = re.findall(r"^\| (raw DDP \(torchrun\)|fabric_kit \(fabric run\)) \| ([12]) \| (\d+) \|", out,
                      re.MULTILINE)
    assert sorted((name, processes) for name, processes, _ in rows) == [
        ("fabric_kit (fabric run)", "1"), ("fabric_kit (fabric run)", "2"),
        ("raw DDP (torchrun)", "1"), ("raw DDP (torchrun)", "2")]
    assert all(int(rate) > 0 for _, _, rate in rows)


def test_checkpoint_io_runs_every_case(clean_env, tmp_path, monkeypatch, capsys):
    """Every row on a 2 MB state, one round, the sharded part on 2 real processes. Raw torch's save runs in a child
    process as every operation does in the benchmark; the others run in this one, through the same JSON the child
    prints (a fresh interpreter per operation is what would cost the time)."""
    child = checkpoint_io.run_one

    def run_one(op, kind, path, mb):
        if (op, kind) == ("save", "raw"):
            return child(op, kind, path, mb)
        return json.loads(json.dumps(checkpoint_io.one(op, kind, str(path), mb)))

    monkeypatch.setattr(checkpoint_io, "run_one", run_one)
    with torch.random.fork_rng():
        checkpoint_io.main(["--mb", "2", "--rounds", "1", "--fsdp-mb", "2", "--fsdp-rounds", "1", "--markdown",
                            "--dir", str(tmp_path)])
    out = capsys.readouterr().out
    rows = re.findall(r"^\| (save|load|load \+ first write|sharded save|sharded load) \| ([^|]+) \| [^|]+ \| "
                      r"(\d+\.\d+) \|", out, re.MULTILINE)
    try:
        import lightning.fabric  # noqa: F401
        kinds = ["raw torch", "fabric_kit Fabric", "Lightning Fabric"]
    except ImportError:
        kinds = ["raw torch", "fabric_kit Fabric"]
    expected = [(op, kind) for op in ("save", "load", "load + first write") for kind in kinds]
    expected += [(op, kind) for op in ("sharded save", "sharded load") for kind in kinds[:2]]
    assert [(op, kind) for op, kind, _ in rows] == expected
    assert all(float(seconds) > 0 for _, _, seconds in rows)
    assert "fabric_kit Fabric sharded load / raw: time" in out and "(target ≤ 1.15×:" in out
    assert list(tmp_path.iterdir()) == []  # every checkpoint was removed


def test_model_parallel_runs_every_layout_with_equal_weights_and_sharded_memory(clean_env):
    proc = subprocess.run([sys.executable, "benchmarks/model_parallel.py", "--steps", "1", "--rounds", "1", "--vocab",
                           "16", "--dim", "16", "--heads", "2", "--seq", "8", "--batch", "2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = re.findall(r"^\| (TP = 2|FSDP2 x TP = 2 x 2) \| ([24]) \| (by hand|fabric_kit) \| (\d+) \|.*"
                      r"\| (\d\.\d+) \(1/[24] = [\d.]+\) \| [^|]+ \| ([^|]+) \|$", proc.stdout, re.MULTILINE)
    assert [(layout, kind) for layout, _, kind, _, _, _ in rows] == [
        ("TP = 2", "by hand"), ("TP = 2", "fabric_kit"), ("FSDP2 x TP = 2 x 2", "by hand"),
        ("FSDP2 x TP = 2 x 2", "fabric_kit")]
    for layout, processes, kind, calls, of_ddp, difference in rows:
        assert int(calls) > 0, layout
        assert 1 / int(processes) <= float(of_ddp) < 1.5 / int(processes), layout  # shards: about 1/N of DDP's
        if kind == "fabric_kit":
            assert float(difference) <= 1e-6, layout  # the same steps from the same weights
    assert proc.stdout.count("(target ≤ 1.03×:") == 2


def test_gpu_step_model_is_gpt2_small_sized():
    with torch.device("meta"):
        model = gpu_step.GPT()
        logits = model(torch.zeros(2, 16, dtype=torch.long))
    assert 100e6 < sum(p.numel() for p in model.parameters()) < 130e6
    assert logits.shape == (2, 16, gpu_step.VOCAB)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the skip path is for machines without CUDA")
def test_gpu_step_skips_cleanly_without_cuda(capsys):
    gpu_step.main([])  # in this process: the module is imported already, a fresh interpreter would add seconds
    assert "skipped, CUDA is not available" in capsys.readouterr().out


def test_accumulation_counts_the_all_reduces_of_every_loop_and_ends_at_the_same_weights(clean_env):
    proc = subprocess.run([sys.executable, "benchmarks/accumulation.py", "--windows", "2", "--rounds", "1", "--width",
                           "8"], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "B = 1 bucket(s)" in proc.stdout  # so all-reduces per window are gradient syncs per window
    rows = {name: (float(reduces), difference) for name, reduces, difference in re.findall(
        r"^\| ([^|]+) \| [^|]+ \| (\d+\.\d+) \| -?\d+\.\d+ \| -?\d+\.\d+ \| ([^|]+) \|$", proc.stdout, re.MULTILINE)}
    expected = {"fabric_kit Fabric": 1.0, "fabric_kit Fabric, no skip": 4.0,
                "loops Trainer": 1.5}  # + the preemption agreement every 10 batches: 1 in 16 batches, 0 in 8
    try:
        import lightning  # noqa: F401
        expected.update({"Lightning Fabric": 1.0, "Lightning Trainer": 1.0})
    except ImportError:
        pass
    assert {name: reduces for name, (reduces, _) in rows.items()} == expected
    for name in ("fabric_kit Fabric, no skip", "loops Trainer", "Lightning Fabric"):
        if name in rows:  # the same steps on the same data (Lightning's Trainer shuffles: not compared)
            assert float(rows[name][1]) <= 1e-6, name
    assert proc.stdout.count("time per window") == len(expected) - 2


def test_throughput_reports_lightnings_figures(clean_env):
    pytest.importorskip("lightning")
    proc = subprocess.run([sys.executable, "benchmarks/throughput.py", "--steps", "20", "--rounds", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = re.findall(r"^\| ([^|]+) \| `([^`]+)` \| ([^|]+) \| ([^|]+) \| ([^|]+) \|$", proc.stdout, re.MULTILINE)
    kinds = {kind for kind, *_ in figures}
    assert kinds == {"ThroughputMonitor (1 process)", "Throughput(world_size=2)", "measure_flops (per batch)"}
    keys = {key for kind, key, *_ in figures if kind == "Throughput(world_size=2)"}
    assert {"samples_per_sec", "device/samples_per_sec", "flops_per_sec", "device/mfu", "items_per_sec"} <= keys
    for kind, key, ours, theirs, difference in figures:
        assert "absent" not in (ours, theirs) and float(difference) <= 1e-12, (kind, key)
    costs = re.findall(r"^\| (fabric_kit|Lightning) ThroughputMonitor \| \+(\d+\.\d) \|", proc.stdout, re.MULTILINE)
    assert [name for name, _ in costs] == ["fabric_kit", "Lightning"] and all(float(c) > 0 for _, c in costs)
