"""Run every benchmark and rewrite benchmarks/README.md (results, the machine they ran on),
benchmarks/overhead.png (the overhead chart) and, in the top-level README.md, the overhead table and the checkpoint
table between their markers. `make bench` runs it.

    python benchmarks/run_all.py

Needs matplotlib for the chart (`pip install 'fabric_kit[bench]'`, which also brings Lightning for the side-by-side
comparisons). Rounds are kept small so the whole run takes a few minutes on 2 CPU cores; each benchmark alone
takes more rounds by default.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import overhead
import torch

HERE = Path(__file__).resolve().parent
TOP_README = HERE.parent / "README.md"
MARKERS = ("<!-- overhead table: written by benchmarks/run_all.py -->", "<!-- end of overhead table -->")
CHECKPOINT_MARKERS = ("<!-- checkpoint table: written by benchmarks/run_all.py -->", "<!-- end of checkpoint table -->")
CHECKPOINT_SCRIPT = "checkpoint_io.py"
# (script, arguments, what it measures, whether it prints Markdown); overhead.py runs in this process, for the
# chart's numbers.
SCRIPTS = [
    ("import_time.py", ["--rounds", "5"], "Import cost above `import torch`", False),
    ("launch.py", ["--rounds", "2"], "`fabric run --devices 2` wall time next to Lightning's", False),
    ("ddp_scaling.py", ["--rounds", "1"], "1 vs 2 processes on a compute-bound model, next to raw DDP", True),
    ("gpu_step.py", [], "GPT-style model in bf16-mixed on one GPU (skipped without CUDA)", True),
    (CHECKPOINT_SCRIPT, ["--rounds", "10", "--fsdp-rounds", "15", "--markdown"],
     "Checkpoint save and load next to raw torch, Lightning Fabric and raw DCP", True),
    ("model_parallel.py", ["--rounds", "16"],
     "TP and FSDP2 × TP next to torch's own APIs by hand, memory per rank next to DDP", True),
    ("accumulation.py", ["--windows", "10", "--rounds", "3"],
     "Gradient accumulation (window 4, 2 processes, DDP) next to Lightning Fabric's and Lightning's Trainer", True),
    ("throughput.py", ["--rounds", "5"],
     "Throughput and ThroughputMonitor next to Lightning's: the same figures, the cost per step", True),
]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    try:
        from importlib.metadata import version

        lightning = f"lightning {version('lightning')}"
    except Exception:  # not installed: the anchors are left out
        lightning = "lightning not installed"
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, {gpu}; {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}, torch {torch.__version__}, {lightning}")


def chart(results: dict[str, dict[str, float | bool]], path: Path) -> None:
    """Extra calls and extra time per step over the raw loop, ours next to Lightning's."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("the chart needs matplotlib: pip install 'fabric_kit[bench]'") from None
    names = [name for name in results if name != overhead.RAW]
    colors = ["#2a7" if name.startswith(("fabric_kit", "loops")) else "#999" for name in names]
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, title in ((axes[0], "extra_calls", "extra Python calls / step"),
                           (axes[1], "extra_us", "extra µs / step")):
        values = [results[name][key] for name in names]
        ax.barh(names, values, color=colors)
        ax.invert_yaxis()
        ax.set_title(title)
        for y, value in enumerate(values):
            ax.text(value, y, f" {value:.0f}", va="center")
        ax.set_xlim(0, max(values) * 1.2)
    axes[1].set_yticklabels([])
    figure.suptitle("Per-step overhead over a raw PyTorch loop (tiny MLP, CPU, lower is better)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def run_script(script: str, args: list[str]) -> str:
    proc = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{script} failed (exit status {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout.strip()


def update_top_readme(table: str, machine_line: str, markers: tuple[str, str] = MARKERS) -> None:
    """Replace what lies between `markers` in the top-level README by `table` (left alone when the markers are
    gone)."""
    text = TOP_README.read_text()
    if not all(marker in text for marker in markers):
        print(f"{TOP_README} has no {markers[0]!r} markers: left unchanged", file=sys.stderr)
        return
    before, rest = text.split(markers[0], 1)
    after = rest.split(markers[1], 1)[1]
    TOP_README.write_text(f"{before}{markers[0]}\n{machine_line}\n\n{table}\n{markers[1]}{after}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    start = time.perf_counter()
    torch.set_num_threads(1)
    print("overhead.py ...", flush=True)
    results = overhead.measure(steps=300, rounds=9)
    chart(results, HERE / "overhead.png")
    sections = [("Per-step overhead (`overhead.py`)", overhead.table(results), True)]
    outputs = {}
    for script, args, title, markdown in SCRIPTS:
        print(f"{script} ...", flush=True)
        outputs[script] = run_script(script, args)
        sections.append((f"{title} (`{script}`)", outputs[script], markdown))
    minutes = (time.perf_counter() - start) / 60

    lines = ["# Benchmark results", "",
             f"Generated by `python benchmarks/run_all.py` (`make bench`) on {datetime.date.today()} in "
             f"{minutes:.1f} minutes.", "", f"Machine: {machine()}.", "",
             "Figures are measured side by side in one run, in interleaved rounds, so machine load hits every "
             "loop alike; ratios are the figures to compare across machines. Calls per step are deterministic; "
             "times on a shared machine are not.", "", "![overhead chart](overhead.png)", ""]
    for title, output, markdown in sections:
        lines += [f"## {title}", "", *([output] if markdown else ["```", output, "```"]), ""]
    (HERE / "README.md").write_text("\n".join(lines))
    machine_line = f"Measured {datetime.date.today()} on: {machine()}."
    update_top_readme(overhead.table(results), machine_line)
    update_top_readme(outputs[CHECKPOINT_SCRIPT], machine_line, CHECKPOINT_MARKERS)
    print(f"wrote {HERE / 'README.md'} and {HERE / 'overhead.png'} in {minutes:.1f} minutes")


if __name__ == "__main__":
    main()
