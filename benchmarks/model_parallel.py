"""Step time of tensor parallelism (TP = 2 on 2 processes) and FSDP2 x TP (2 x 2 on 4 processes) under fabric_kit's
`ModelParallelStrategy`, next to the same model parallelized by hand with torch's own APIs in the same processes;
and each rank's parameter + optimizer memory next to DDP's.

The model is examples/fabric/tensor_parallel.py's Llama-style transformer (attention, SwiGLU MLP, RMSNorm), cut by
that example's `parallelize` (parallelize_module over "tensor_parallel", fully_shard over "data_parallel", loss
parallel logits). By hand: `init_device_mesh`, `parallelize(model, mesh)`, `torch.optim.AdamW` and a plain loop
(`loss.backward()`, `optimizer.step()`). fabric_kit: `Fabric(strategy=ModelParallelStrategy(parallelize, ...))`,
`setup_module`, `setup_optimizers`, `fabric.backward`. Both build the model from the same seed and train on the
same fixed batch (one per data-parallel rank), so they end with the same weights (the table shows the largest
difference).

Each layout is one `torchrun` job; its processes time the two loops in interleaved rounds (by hand first in even
rounds, fabric_kit first in odd ones), each round `--steps` steps of each loop between barriers after a warm-up, one
thread per process, the garbage collector off (as `timeit` does: a collection would land in one loop at random).
Rounds of one step each (the default) put the two loops' steps next to each other, so a burst of load from other
processes on the machine hits both alike. The figures are the fastest round (other processes only ever add time)
and the median; the ratio to the hand-made loop is given for both (median: of the per-round ratios, the figure the
target is checked on: a fastest time is one lucky step of each loop, while the median ratio compares the steps that
ran side by side). Target: fabric_kit <= 1.03x on CPU. The Python calls of one step (overhead.py's count, rank 0)
are deterministic where the times are not: on a loaded machine most of a step is waiting for the other ranks'
collectives. Less sensitive to that load than the step time is the CPU time rank 0's process spends in a step (its
own work, without the waits): its median per-round ratio is given too.

Memory is the bytes of the parameter and AdamW state tensors each rank holds after a step (its local shards),
largest rank: deterministic. DDP holds the whole model and its optimizer state on every rank (counted on one
unsharded copy), so the ideal is 1/N of it; what stays replicated (norm weights over the tensor-parallel ranks of
a TP-only layout) sits above that. MFU (6 FLOPs per parameter per token plus attention, over the GPUs' dense bf16
peak) is printed when the layout runs on CUDA GPUs (one per process, bf16-mixed); otherwise "unmeasured (no GPU)".

    python benchmarks/model_parallel.py [--steps 1] [--rounds 40] [--dim 256] [--depth 2] [--seq 128] [--batch 8]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = {"TP = 2": (2, 2), "FSDP2 x TP = 2 x 2": (4, 2)}  # name: (processes, tensor-parallel size)
KINDS = ("by hand", "fabric_kit")
TARGET = 1.03
WARMUP = 2


def example():
    """examples/fabric/tensor_parallel.py as a module: its Transformer, parallelize and copy_batch."""
    sys.path.insert(0, str(ROOT / "examples" / "fabric"))
    import tensor_parallel

    return tensor_parallel


def local_bytes(model, optimizer) -> int:
    """Bytes of the parameters and optimizer state this process holds (its shards of DTensors)."""
    tensors = list(model.parameters()) + [v for s in optimizer.state.values() for v in s.values()]
    tensors = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]
    return sum(t.numel() * t.element_size() for t in tensors)


def worker(args: argparse.Namespace) -> None:
    """One rank of a layout: both loops on the same processes, interleaved rounds; rank 0 prints the results."""
    import torch
    import torch.distributed as dist
    from overhead import count_calls
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import loss_parallel
    from torch.nn import functional as F

    from fabric_kit import Fabric
    from fabric_kit.strategies import ModelParallelStrategy

    tp = example()
    world = int(os.environ["WORLD_SIZE"])
    cuda = torch.cuda.is_available() and torch.cuda.device_count() >= world
    precision = "bf16-mixed" if cuda else "32-true"
    fabric = Fabric(accelerator="cuda" if cuda else "cpu", devices=world, precision=precision,
                    strategy=ModelParallelStrategy(tp.parallelize, tensor_parallel_size=args.tp))
    fabric.launch()
    device, dp_rank = fabric.device, fabric.strategy.distributed_sampler_kwargs["rank"]

    def new_model():
        torch.manual_seed(0)
        with torch.device(device):
            return tp.Transformer(args.vocab, args.dim, args.depth, args.heads, args.seq)

    tokens = tp.copy_batch(args.batch, args.seq, args.vocab, torch.Generator().manual_seed(dp_rank)).to(device)
    targets = torch.roll(tokens, -1, dims=1)

    def loss_of(model):
        return F.cross_entropy(model(tokens).flatten(0, 1), targets.flatten())

    mesh = init_device_mesh(device.type, (world // args.tp, args.tp), mesh_dim_names=("data_parallel",
                                                                                       "tensor_parallel"))
    hand_model = tp.parallelize(new_model(), mesh)
    hand_optimizer = torch.optim.AdamW(hand_model.parameters(), lr=1e-3)

    def hand_step() -> None:
        with loss_parallel(), torch.autocast(device.type, torch.bfloat16, enabled=cuda):
            loss = loss_of(hand_model)
        with loss_parallel():
            hand_optimizer.zero_grad()
            loss.backward()
        hand_optimizer.step()

    with fabric.init_module():
        fabric_model = new_model()
    fabric_model = fabric.setup_module(fabric_model)
    fabric_optimizer = fabric.setup_optimizers(torch.optim.AdamW(fabric_model.parameters(), lr=1e-3))

    def fabric_step() -> None:
        with loss_parallel():
            loss = loss_of(fabric_model)
            fabric_optimizer.zero_grad()
            fabric.backward(loss)
        fabric_optimizer.step()

    steps = {"by hand": hand_step, "fabric_kit": fabric_step}

    def barrier() -> None:
        if cuda:
            torch.cuda.synchronize()
        dist.barrier()

    for step in steps.values():
        for _ in range(WARMUP):
            step()
    calls = {kind: count_calls(steps[kind]) for kind in KINDS}  # every rank runs the step; rank 0 reports
    seconds: dict[str, list[float]] = {kind: [] for kind in KINDS}
    cpu_seconds: dict[str, list[float]] = {kind: [] for kind in KINDS}
    gc.collect()
    gc.disable()
    for round_ in range(args.rounds):
        for kind in KINDS if round_ % 2 == 0 else reversed(KINDS):
            barrier()
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                steps[kind]()
            cpu_seconds[kind].append((time.process_time() - cpu_start) / args.steps)
            barrier()
            seconds[kind].append((time.perf_counter() - start) / args.steps)
    gc.enable()

    difference = max((a.full_tensor() - b.full_tensor()).abs().max().item()
                     for a, b in zip(hand_model.parameters(), fabric_model.parameters(), strict=True))
    memory = {"by hand": local_bytes(hand_model, hand_optimizer),
              "fabric_kit": local_bytes(fabric_model, fabric_optimizer)}
    gathered: list[dict[str, int] | None] = [None] * world
    dist.all_gather_object(gathered, memory)
    if fabric.is_global_zero:
        ddp_model = tp.Transformer(args.vocab, args.dim, args.depth, args.heads, args.seq)  # what DDP replicates
        ddp_optimizer = torch.optim.AdamW(ddp_model.parameters(), lr=1e-3)
        ddp_model(tokens[:1].cpu()).sum().backward()
        ddp_optimizer.step()
        parameters = sum(p.numel() for p in ddp_model.parameters())
        print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "calls": calls, "difference": difference,
                          "cuda": cuda, "precision": precision,
                          "gpu": torch.cuda.get_device_name() if cuda else None, "parameters": parameters,
                          "memory": {kind: max(m[kind] for m in gathered if m) for kind in KINDS},
                          "ddp_memory": local_bytes(ddp_model, ddp_optimizer)}))


def launch(args: argparse.Namespace, processes: int, tensor_parallel: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FABRIC_KIT_", "TORCHELASTIC_", "SLURM_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p))
    sizes = [f"--{name}={getattr(args, name)}" for name in ("steps", "rounds", "vocab", "dim", "depth", "heads", "seq",
                                                            "batch")]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               __file__, "--worker", f"--tp={tensor_parallel}", *sizes]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the {processes}-process run failed (exit status {proc.returncode}):\n{proc.stdout}\n"
                         f"{proc.stderr}")
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("{")))


def mfu(result: dict, args: argparse.Namespace, processes: int, tensor_parallel: int, seconds: float) -> str:
    if not result["cuda"]:
        return "unmeasured (no GPU)"
    from gpu_step import peak_flops

    peak = peak_flops(args.peak_tflops)
    if peak is None:
        return "unknown peak (--peak-tflops)"
    tokens = args.batch * (processes // tensor_parallel) * args.seq  # per step, over the data-parallel ranks
    flops = (6 * result["parameters"] + 12 * args.depth * args.dim * args.seq) * tokens
    return f"{flops / seconds / (peak * processes):.1%}"


def report(results: dict[str, dict], args: argparse.Namespace) -> str:
    first = next(iter(results.values()))
    where = f"{first['gpu']} GPUs" if first["cuda"] else "CPU processes (gloo), one thread each"
    lines = [f"Llama-style transformer: {first['parameters'] / 1e6:.2f}M parameters (dim {args.dim}, depth "
             f"{args.depth}, {args.heads} heads, vocabulary {args.vocab}), {args.batch} sequences of {args.seq} "
             f"tokens per data-parallel rank, {first['precision']}, AdamW; {where}; {args.steps} step(s) per round, "
             f"{args.rounds} interleaved round(s), after {WARMUP} warm-up steps.", "",
             "| layout | processes | loop | calls / step | ms / step (fastest) | ms / step (median) | "
             "× by hand (fastest) | "
             "× by hand (median of rounds) | param + optimizer MB per rank | × DDP (ideal 1/N) | MFU | "
             "max \\|Δ weight\\| |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    verdicts = []
    for name, result in results.items():
        processes, tensor_parallel = LAYOUTS[name]
        hand = result["seconds"]["by hand"]
        for kind in KINDS:
            times = result["seconds"][kind]
            fastest, median = min(times), statistics.median(times)
            ratio = fastest / min(hand)
            per_round = statistics.median(t / h for t, h in zip(times, hand, strict=True))
            ratios = ("—", "—") if kind == "by hand" else (f"{ratio:.3f}", f"{per_round:.3f}")
            memory = result["memory"][kind]
            difference = "—" if kind == "by hand" else f"{result['difference']:.1e}"
            lines.append(f"| {name} | {processes} | {kind} | {result['calls'][kind]} | {fastest * 1e3:.2f} | "
                         f"{median * 1e3:.2f} | {ratios[0]} | "
                         f"{ratios[1]} | {memory / 2**20:.2f} | {memory / result['ddp_memory']:.3f} "
                         f"(1/{processes} = {1 / processes:.3f}) | "
                         f"{mfu(result, args, processes, tensor_parallel, fastest)} | "
                         f"{difference} |")
            if kind == "fabric_kit":
                cpu = statistics.median(t / h for t, h in zip(result["cpu_seconds"][kind],
                                                              result["cpu_seconds"]["by hand"], strict=True))
                met = "met" if per_round <= TARGET else "MISSED"
                verdicts.append(f"- fabric_kit / by hand, {name}: step time {per_round:.3f}× median of the per-round "
                                f"ratios (target ≤ {TARGET}×: {met}), {ratio:.3f}× fastest; CPU time per step "
                                f"(rank 0) {cpu:.3f}× median of the per-round ratios; "
                                f"{result['calls'][kind] - result['calls']['by hand']:+d} Python calls per step "
                                f"({result['calls'][kind] / result['calls']['by hand']:.4f}×); memory per rank "
                                f"{memory / result['memory']['by hand']:.3f}× by hand's, "
                                f"{memory / result['ddp_memory']:.3f}× DDP's")
    return "\n".join([*lines, "", *verdicts])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1, help="timed steps per loop and round (default 1)")
    parser.add_argument("--rounds", type=int, default=40, help="interleaved rounds (default 40)")
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4, help="divisible by the tensor-parallel size 2")
    parser.add_argument("--seq", type=int, default=128, help="sequence length (even)")
    parser.add_argument("--batch", type=int, default=8, help="sequences per data-parallel rank (default 8)")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, when not in gpu_step's list")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tp", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return
    results = {name: launch(args, processes, tensor_parallel) for name, (processes, tensor_parallel)
               in LAYOUTS.items()}
    print(report(results, args))


if __name__ == "__main__":
    main()
