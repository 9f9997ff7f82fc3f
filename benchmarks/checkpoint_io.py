"""Checkpoint save and load, side by side in one run: raw PyTorch, fabric_kit's Fabric, and Lightning Fabric when
lightning is installed; and a sharded FSDP save/load on 2 processes, fabric_kit against raw
torch.distributed.checkpoint.

The state is an MLP (24 square layers) and its Adam optimizer after one step, so the optimizer holds exp_avg and
exp_avg_sq: parameters are a third of `--mb`. What each implementation does:
- save. raw: `torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)`, then
  `os.fsync` of the file. fabric_kit: `Fabric(accelerator="cpu", devices=1).save(path, {"model": model,
  "optimizer": optimizer})` (temporary file, fsync, rename, fsync of the directory). Lightning:
  `lightning.fabric.Fabric(...).save` of the same (it writes through fsspec and does not fsync).
- load, into a model and optimizer built the same way from another seed (the loaded values are checked against
  the saved ones afterwards, untimed). raw: `torch.load(path, weights_only=True)`, then `model.load_state_dict`
  and `optimizer.load_state_dict`. fabric_kit: `fabric.load(path, {"model": model, "optimizer": optimizer})`,
  which verifies every record's CRC-32 first. Lightning: `fabric.load(..., weights_only=True)` of its own file.
  Each reads the file its own save just wrote, so from a warm page cache (`--cold` drops the file's pages first).
- load + first write: the load, then one in-place write of every tensor, as the first optimizer step does: a load
  that left tensors mapped from the file (`torch.load(mmap=True)`) would pay its copy-on-write faults here, so this
  row keeps any deferred cost next to raw's.

Every save and every load runs in a fresh process (this script with `--one`), which times that one operation and
takes its peak memory: the peak RSS while it runs (the kernel's high-water mark VmHWM, reset just before it through
/proc/self/clear_refs on Linux; `ru_maxrss` elsewhere), counted from the RSS the process had before it built the
state, so "peak" is the state it holds plus what the operation adds; "added" is the peak minus the RSS just before
the operation. File pages that fabric_kit's load maps and touches count in its RSS as anonymous memory does. Each
process first saves and loads a tiny state, untimed, so first-call imports and library pages stay out of both
figures. The processes run in interleaved rounds (raw, fabric_kit, Lightning, rotated each round), so machine load
hits all alike. The time ratio judged against the target is the median of the per-round ratios: each round runs
the implementations back to back, so a slow moment of this shared machine's disk or CPU hits them alike, and the
median drops the rounds that one of them had alone (on a 2-core VM single rounds range from 0.3x to 3.7x). The
fastest time of each implementation and their ratio are shown too; memory is the median of the rounds.

Sharded: `fabric run --devices 2` starts two CPU processes (gloo); FSDPStrategy(state_dict_type="sharded") shards
the MLP (each Linear its own group) and both sides work on that one fully_shard'ed model and its optimizer. raw:
`dcp.save(get_state_dict(model, optimizer))` / `dcp.load` + `set_state_dict`. fabric_kit: `fabric.save(dir,
state)` / `fabric.load(dir, state)` (a manifest of every shard's CRC-32, fsynced, the directory swapped in
atomically; verified before loading). These run in the same two processes, interleaved, timed on rank 0 between
barriers; memory is the largest of the ranks' peaks, reset before each operation (memory an earlier operation freed
and the allocator kept is reused without showing).

Targets: fabric_kit at most 1.15x raw's time (the median of the per-round ratios) and 1.1x raw's peak memory, for
save and load.

    python benchmarks/checkpoint_io.py [--mb 600] [--rounds 5] [--fsdp-mb 400] [--fsdp-rounds 3] [--markdown]
    python benchmarks/checkpoint_io.py --fsdp-only --fsdp-rounds 7   # the sharded comparison alone
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS, BATCH = 24, 8
TIME_TARGET, MEMORY_TARGET = 1.15, 1.10
KINDS = ("raw", "fabric_kit", "lightning")
FIRST_WRITE = "load + first write"
NAMES = {"raw": "raw torch", "fabric_kit": "fabric_kit Fabric", "lightning": "Lightning Fabric"}
WHAT = {("save", "raw"): "torch.save + fsync", ("save", "fabric_kit"): "fabric.save",
        ("save", "lightning"): "fabric.save (no fsync)",
        ("load", "raw"): "torch.load(weights_only=True) + load_state_dict",
        ("load", "fabric_kit"): "fabric.load (CRC-32 verified)", ("load", "lightning"): "fabric.load",
        **{(FIRST_WRITE, kind): "the load, then one write of every tensor" for kind in KINDS},
        ("sharded save", "raw"): "dcp.save(get_state_dict)", ("sharded save", "fabric_kit"): "fabric.save",
        ("sharded load", "raw"): "dcp.load + set_state_dict",
        ("sharded load", "fabric_kit"): "fabric.load (manifest verified)"}


# -- the state ------------------------------------------------------------------------------------------------------
def width_for(mb: float) -> int:
    """Width of the square layers for which parameters, exp_avg and exp_avg_sq (float32) make about `mb` MB."""
    return max(64, round(math.sqrt(mb * 2**20 / 3 / 4 / LAYERS) / 64) * 64)


def make_model(mb: float):
    from torch import nn

    width = width_for(mb)
    layers = []
    for _ in range(LAYERS):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def train_one_step(model, optimizer, width: int, backward=None) -> None:
    """One Adam step, so the optimizer holds its state; gradients are freed afterwards (a checkpoint has none)."""
    import torch

    loss = model(torch.randn(BATCH, width)).square().mean()
    (backward or torch.autograd.backward)(loss)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def build(mb: float, seed: int):
    import torch

    torch.manual_seed(seed)
    model = make_model(mb)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train_one_step(model, optimizer, width_for(mb))
    return model, optimizer


def fingerprint(model, optimizer, local=lambda t: t) -> list[float]:
    """Sums (float64) of every parameter and optimizer state tensor: equal before a save and after its load."""
    import torch

    with torch.no_grad():
        sums = [local(p).double().sum().item() for p in model.parameters()]
        for state in optimizer.state.values():
            sums += [local(v).double().sum().item() for k, v in sorted(state.items()) if k != "step"]
    return sums


def state_bytes(model, optimizer, local=lambda t: t) -> int:
    """Bytes of the parameters and optimizer state this process holds (its shards, with `local`)."""
    tensors = list(model.parameters()) + [v for s in optimizer.state.values() for v in s.values()]
    return sum(local(t).numel() * local(t).element_size() for t in tensors)


# -- memory -----------------------------------------------------------------------------------------------------------
def _status_kb(field: str) -> int | None:
    try:
        return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))
    except (OSError, AttributeError):
        return None


def rss_kb() -> int:
    """This process's resident set now (the high-water mark where /proc is missing)."""
    now = _status_kb("VmRSS")
    return now if now is not None else _maxrss_kb()


def _maxrss_kb() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak


def reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS (Linux >= 4.0); False where that is impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_kb() -> int:
    """The high-water mark of this process's RSS. VmHWM where /proc has it: `ru_maxrss` also counts, in a process
    started by fork and exec, the RSS its parent had when it forked."""
    peak = _status_kb("VmHWM")
    return peak if peak is not None else _maxrss_kb()


# -- one operation in a fresh process ---------------------------------------------------------------------------------
def one(op: str, kind: str, path: str, mb: float) -> dict:
    """Build the state (seed 0 to save, seed 1 to load into), run one save or load, and measure it."""
    if kind == "fabric_kit":
        from fabric_kit import Fabric
    elif kind == "lightning":
        from lightning.fabric import Fabric
    fabric = None if kind == "raw" else Fabric(accelerator="cpu", devices=1)
    # A save and a load of a tiny state first, untimed: the first call in a process imports modules and faults in
    # library code (tens of MB of RSS), which a training process has long done by its first checkpoint.
    warmup = os.path.join(os.path.dirname(path), ".warmup.ckpt")
    tiny = build(0.1, seed=2)
    save(kind, fabric, warmup, *tiny)
    load(kind, fabric, warmup, *tiny)
    os.unlink(warmup)
    del tiny
    gc.collect()
    base = rss_kb()
    model, optimizer = build(mb, seed=0 if op == "save" else 1)
    before_fingerprint = fingerprint(model, optimizer)
    gc.collect()
    before = rss_kb()
    reset = reset_peak()
    start = time.perf_counter()
    (save if op == "save" else load)(kind, fabric, path, model, optimizer)
    seconds = time.perf_counter() - start
    peak = peak_kb()
    measured = {}
    if op == "load":
        # What the first optimizer step then pays: tensors still mapped from a file would fault in and be copied
        # on this first write; ones torch.load read into memory are written in place.
        start = time.perf_counter()
        first_write(model, optimizer)
        total, then = seconds + time.perf_counter() - start, peak_kb()
        measured = {"then_seconds": total, "then_peak_mb": (then - base) / 1024,
                    "then_added_mb": (then - before) / 1024}
    return {"seconds": seconds, "peak_mb": (peak - base) / 1024, "added_mb": (peak - before) / 1024, **measured,
            "peak_reset": reset, "state_mb": state_bytes(model, optimizer) / 2**20,
            "fingerprint": fingerprint(model, optimizer) if op == "load" else before_fingerprint,
            "changed": op == "save" or before_fingerprint != fingerprint(model, optimizer)}


def first_write(model, optimizer) -> None:
    """Write every byte of every parameter and optimizer state tensor once, leaving it as it is. An integer `|= 0`:
    float arithmetic (`mul_(1)`) on this state took anywhere from 0.03 to 0.6 s from one process to the next, which
    would swamp the cost of the write itself; this takes 0.03 s on resident memory every time."""
    import torch

    with torch.no_grad():
        for tensor in [*model.parameters(), *(v for s in optimizer.state.values() for v in s.values())]:
            tensor.view(-1).view(torch.uint8).bitwise_or_(0)


def save(kind: str, fabric, path: str, model, optimizer) -> None:
    import torch

    if kind != "raw":
        fabric.save(path, {"model": model, "optimizer": optimizer})
        return
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load(kind: str, fabric, path: str, model, optimizer) -> None:
    import torch

    if kind == "raw":
        checkpoint = torch.load(path, weights_only=True)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
    elif kind == "fabric_kit":
        fabric.load(path, {"model": model, "optimizer": optimizer})
    else:
        fabric.load(path, {"model": model, "optimizer": optimizer}, weights_only=True)


def run_one(op: str, kind: str, path: Path, mb: float) -> dict:
    # Every earlier write reaches the disk first: Lightning's save does not fsync, and its file's write-back would
    # otherwise land in the timing of whichever operation runs next.
    os.sync()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run([sys.executable, __file__, "--one", op, kind, str(path), "--mb", str(mb)], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{op} with {kind} failed (exit status {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def drop_cached_pages(path: Path) -> None:
    """Ask the kernel to drop a file's (clean, fsynced) pages from the page cache, so the next read hits the disk."""
    for file in [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def single_process(kinds: list[str], mb: float, rounds: int, directory: Path, cold: bool) -> dict:
    """{(op, kind): [measurement of each round]}; each round saves with every kind, then loads each file."""
    results: dict[tuple[str, str], list[dict]] = {(op, kind): [] for op in ("save", "load", FIRST_WRITE)
                                                  for kind in kinds}
    for round_ in range(rounds):
        order = kinds[round_ % len(kinds):] + kinds[:round_ % len(kinds)]
        round_dir = Path(tempfile.mkdtemp(prefix=f"round{round_}-", dir=directory))
        try:
            paths = {kind: round_dir / kind / "state.ckpt" for kind in kinds}
            for path in paths.values():
                path.parent.mkdir()
            saved = {}
            for kind in order:
                saved[kind] = run_one("save", kind, paths[kind], mb)
                results[("save", kind)].append(saved[kind])
            for kind in order:
                if cold:
                    drop_cached_pages(paths[kind])
                loaded = run_one("load", kind, paths[kind], mb)
                if not loaded["changed"] or loaded["fingerprint"] != saved[kind]["fingerprint"]:
                    raise SystemExit(f"{kind}: the loaded state differs from the saved one")
                results[("load", kind)].append(loaded)
                results[(FIRST_WRITE, kind)].append({key: loaded[f"then_{key}"]
                                                     for key in ("seconds", "peak_mb", "added_mb")})
            file_mb = {kind: paths[kind].stat().st_size / 2**20 for kind in kinds}
            for kind in kinds:
                results[("save", kind)][-1]["file_mb"] = file_mb[kind]
        finally:
            shutil.rmtree(round_dir, ignore_errors=True)
    return results


# -- sharded FSDP on 2 processes ------------------------------------------------------------------------------------
def fsdp_worker(mb: float, rounds: int, directory: str) -> None:
    """Both ranks: shard the MLP, take one step, then save and load it `rounds` times each way, interleaved."""
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch import nn
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.tensor import DTensor

    from fabric_kit import Fabric
    from fabric_kit.strategies.fsdp import FSDPStrategy

    fabric = Fabric(accelerator="cpu", devices=2,
                    strategy=FSDPStrategy(auto_wrap_policy={nn.Linear}, state_dict_type="sharded"))
    fabric.launch()

    def sharded_state(mb: float):
        torch.manual_seed(0)
        model = fabric.setup_module(make_model(mb))
        optimizer = fabric.setup_optimizers(torch.optim.Adam(model.parameters(), lr=1e-3))
        train_one_step(model, optimizer, width_for(mb), fabric.backward)
        return model, optimizer

    def raw_save(path: str, model, optimizer) -> None:
        # What raw DCP works on: the fully_shard'ed model itself and the torch optimizer, behind fabric's wrappers.
        model_state, optimizer_state = get_state_dict(model.module, optimizer.optimizer)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=path)

    def raw_load(path: str, model, optimizer) -> None:
        model_state, optimizer_state = get_state_dict(model.module, optimizer.optimizer)
        dcp.load({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=path)
        set_state_dict(model.module, optimizer.optimizer, model_state_dict=model_state,
                       optim_state_dict=optimizer_state)

    ops = {("sharded save", "raw"): raw_save, ("sharded load", "raw"): raw_load,
           ("sharded save", "fabric_kit"): lambda p, m, o: fabric.save(p, {"model": m, "optimizer": o}),
           ("sharded load", "fabric_kit"): lambda p, m, o: fabric.load(p, {"model": m, "optimizer": o})}

    # Warm-up as in `one`: each operation once on a tiny sharded state, untimed.
    tiny = sharded_state(0.1)
    for (_, kind), run in ops.items():
        run(os.path.join(directory, f"warmup-{kind}"), *tiny)
    del tiny
    gc.collect()
    fabric.barrier()
    base = rss_kb()
    model, optimizer = sharded_state(mb)
    module, inner = model.module, optimizer.optimizer

    def local(t):
        return t.to_local() if isinstance(t, DTensor) else t

    expected = fingerprint(module, inner, local)

    def scrub() -> None:
        """Zero every shard, so a load must bring the values back."""
        with torch.no_grad():
            for t in [*module.parameters(), *(v for s in inner.state.values() for k, v in s.items() if k != "step")]:
                t.zero_()

    results = {f"{op}|{kind}": [] for op, kind in ops}
    for round_ in range(rounds):
        order = ["raw", "fabric_kit"] if round_ % 2 == 0 else ["fabric_kit", "raw"]
        for op in ("sharded save", "sharded load"):
            for kind in order:
                path = os.path.join(directory, f"round{round_}-{kind}")
                if op == "sharded load":
                    scrub()
                gc.collect()
                os.sync()  # no write-back of an earlier round's files inside this timing
                before = rss_kb()
                fabric.barrier()
                reset_peak()
                start = time.perf_counter()
                ops[(op, kind)](path, model, optimizer)
                fabric.barrier()
                seconds = time.perf_counter() - start
                peak = peak_kb()
                if op == "sharded load" and fingerprint(module, inner, local) != expected:
                    raise RuntimeError(f"rank {fabric.global_rank}: {kind} loaded other values than it saved")
                measured = [None] * fabric.world_size
                dist.all_gather_object(measured, ((peak - base) / 1024, (peak - before) / 1024))
                results[f"{op}|{kind}"].append({"seconds": seconds, "peak_mb": max(m[0] for m in measured),
                                                "added_mb": max(m[1] for m in measured)})
        if fabric.is_global_zero:
            for kind in order:
                shutil.rmtree(os.path.join(directory, f"round{round_}-{kind}"), ignore_errors=True)
        fabric.barrier()
    total = [None] * fabric.world_size
    dist.all_gather_object(total, state_bytes(module, inner, local))
    if fabric.is_global_zero:
        print(json.dumps({"results": results, "state_mb": sum(total) / 2**20}))


def sharded(mb: float, rounds: int, directory: Path) -> tuple[dict, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FABRIC_KIT_", "TORCHELASTIC_", "SLURM_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p))
    fsdp_dir = tempfile.mkdtemp(prefix="fsdp-", dir=directory)
    command = [sys.executable, "-m", "fabric_kit", "run", "--devices", "2", __file__, "--fsdp-worker",
               "--fsdp-mb", str(mb), "--fsdp-rounds", str(rounds), "--dir", fsdp_dir]
    try:
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    finally:
        shutil.rmtree(fsdp_dir, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"the sharded FSDP run failed (exit status {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    report = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("{")))
    return {tuple(key.split("|")): values for key, values in report["results"].items()}, report["state_mb"]


# -- report -----------------------------------------------------------------------------------------------------------
def file_system(path: Path) -> str:
    """`/tmp (ext4 on /dev/vda)`: the mount that holds `path`, from /proc/mounts where there is one."""
    try:
        mounts = [line.split()[:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return str(path)
    resolved = str(path.resolve())
    best = max((m for m in mounts if resolved == m[1] or resolved.startswith(m[1].rstrip("/") + "/")),
               key=lambda m: len(m[1]), default=None)
    return f"{path} ({best[2]} on {best[0]})" if best else str(path)


def summarize(results: dict) -> dict:
    """Per (op, kind): fastest time, median peak and added memory, and (for non-raw kinds) the ratios to raw."""
    summary = {}
    for (op, kind), rounds in results.items():
        summary[(op, kind)] = {"seconds": min(r["seconds"] for r in rounds),
                               "peak_mb": statistics.median(r["peak_mb"] for r in rounds),
                               "added_mb": statistics.median(r["added_mb"] for r in rounds)}
    for (op, kind), rounds in results.items():
        if kind == "raw":
            continue
        raw, ours = summary[(op, "raw")], summary[(op, kind)]
        per_round = [r["seconds"] / b["seconds"] for r, b in zip(rounds, results[(op, "raw")], strict=False)]
        ours.update(time_ratio=ours["seconds"] / raw["seconds"], per_round=per_round,
                    median_ratio=statistics.median(per_round),
                    # a state of a few MB (the smoke test) can leave raw's measured peak at 0
                    peak_ratio=ours["peak_mb"] / raw["peak_mb"] if raw["peak_mb"] else math.nan)
    return summary


def verdict(ratio: float, target: float) -> str:
    return "met" if ratio <= target else "MISSED"


def report(summary: dict, markdown: bool, header: list[str]) -> str:
    lines = [line for paragraph in header for line in (paragraph, "")]
    rows = [(op, kind) for op in ("save", "load", FIRST_WRITE, "sharded save", "sharded load") for kind in KINDS
            if (op, kind) in summary]
    dash = "—" if markdown else "-"

    def ratios(s: dict, kind: str) -> tuple[str, str, str]:
        if kind == "raw":
            return dash, dash, dash
        return f"{s['time_ratio']:.2f}", f"{s['median_ratio']:.2f}", f"{s['peak_ratio']:.2f}"

    if markdown:
        lines += ["| operation | implementation | what | s (fastest) | × raw (fastest) | × raw (median of rounds) | "
                  "peak MB | × raw | added MB |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for op, kind in rows:
            s = summary[(op, kind)]
            time_ratio, median_ratio, peak_ratio = ratios(s, kind)
            lines.append(f"| {op} | {NAMES[kind]} | {WHAT[(op, kind)]} | {s['seconds']:.3f} | {time_ratio} | "
                         f"{median_ratio} | {s['peak_mb']:.0f} | {peak_ratio} | {s['added_mb']:.0f} |")
    else:
        lines.append(f"{'operation':<18} {'implementation':<18} {'s fastest':>9} {'x fast':>6} {'x median':>8} "
                     f"{'peak MB':>8} {'x raw':>6} {'added MB':>8}")
        for op, kind in rows:
            s = summary[(op, kind)]
            time_ratio, median_ratio, peak_ratio = ratios(s, kind)
            lines.append(f"{op:<18} {NAMES[kind]:<18} {s['seconds']:>9.3f} {time_ratio:>6} {median_ratio:>8} "
                         f"{s['peak_mb']:>8.0f} {peak_ratio:>6} {s['added_mb']:>8.0f}")
    lines.append("")
    bullet = "- " if markdown else ""
    times = "×" if markdown else "x"
    for op, kind in rows:
        if kind == "raw":
            continue
        s = summary[(op, kind)]
        target = (f" (target ≤ {TIME_TARGET}{times}: {verdict(s['median_ratio'], TIME_TARGET)})"
                  if kind == "fabric_kit" else "")
        memory_target = (f" (target ≤ {MEMORY_TARGET}{times}: {verdict(s['peak_ratio'], MEMORY_TARGET)})"
                         if kind == "fabric_kit" else "")
        rounds = ", ".join(f"{r:.2f}" for r in s["per_round"])
        lines.append(f"{bullet}{NAMES[kind]} {op} / raw: time {s['median_ratio']:.3f}{times}, the median of the "
                     f"per-round ratios{target}: {rounds}; fastest rounds {s['time_ratio']:.3f}{times}; peak memory "
                     f"{s['peak_ratio']:.3f}{times}{memory_target}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=600, help="model + Adam state in MB (default 600)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds, single process (default 5)")
    parser.add_argument("--fsdp-mb", type=float, default=400, help="sharded state in MB, both ranks (default 400)")
    parser.add_argument("--fsdp-rounds", type=int, default=3, help="interleaved sharded rounds (default 3)")
    parser.add_argument("--no-fsdp", action="store_true", help="leave the sharded FSDP comparison out")
    parser.add_argument("--fsdp-only", action="store_true", help="run only the sharded FSDP comparison")
    parser.add_argument("--no-lightning", action="store_true", help="leave Lightning Fabric out")
    parser.add_argument("--cold", action="store_true", help="drop each file's cached pages before loading it")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where checkpoints are written (removed afterwards; default: the temporary directory)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--one", nargs=3, metavar=("OP", "KIND", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--fsdp-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.no_fsdp and args.fsdp_only:
        parser.error("--no-fsdp and --fsdp-only leave nothing to run; pass at most one of them")
    if args.one:
        print(json.dumps(one(*args.one, args.mb)))
        return
    if args.fsdp_worker:
        fsdp_worker(args.fsdp_mb, args.fsdp_rounds, str(args.dir))
        return

    kinds = list(KINDS)
    if args.no_lightning:
        kinds.remove("lightning")
    else:
        try:
            import lightning.fabric  # noqa: F401
        except ImportError:
            print("lightning is not installed: Lightning Fabric is left out", file=sys.stderr)
            kinds.remove("lightning")
    args.dir.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="checkpoint_io-", dir=args.dir))
    try:
        results = {} if args.fsdp_only else single_process(kinds, args.mb, args.rounds, directory, args.cold)
        fsdp_mb = None
        if not args.no_fsdp:
            sharded_results, fsdp_mb = sharded(args.fsdp_mb, args.fsdp_rounds, directory)
            results.update(sharded_results)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    header = [] if args.fsdp_only else [single_process_header(results, args)]
    if fsdp_mb is not None:
        header.append(f"Sharded: {fsdp_mb:.0f} MB of state over 2 CPU processes (gloo), "
                      f"{args.fsdp_rounds} interleaved round(s) in the same two processes, timed between barriers; "
                      f"memory is the larger rank's, counted from before the state was built (so it includes "
                      f"what sharding the model and its first step left with the allocator); added shows only "
                      f"growth beyond memory that earlier operations freed.")
    if not args.markdown:
        header = [line.replace("×", "x").replace("−", "-") for line in header]
    print(report(summarize(results), args.markdown, header))


def single_process_header(results: dict, args: argparse.Namespace) -> str:
    """The paragraph above the table describing the single-process state and how it was measured."""
    state_mb = results[("save", "raw")][0]["state_mb"]
    file_mb = results[("save", "raw")][0]["file_mb"]
    reset = all(r.get("peak_reset", True) for rounds in results.values() for r in rounds)
    width = width_for(args.mb)
    return (f"MLP of {LAYERS} {width}×{width} layers + Adam state after one step: {state_mb:.0f} MB in memory, "
            f"{file_mb:.0f} MB on disk; written to {file_system(args.dir)}, "
            f"{'cold' if args.cold else 'warm'} page cache for loads. Single-process figures: "
            f"{args.rounds} interleaved round(s), one fresh process per operation; times judged by the median of "
            f"the per-round ratios to raw (the fastest of each is shown too); peak RSS "
            f"{'(high-water mark reset before the operation)' if reset else '(ru_maxrss, not reset)'} counted "
            f"from the RSS before the state was built (state + operation); added = peak − RSS just before the "
            f"operation.")


if __name__ == "__main__":
    main()
