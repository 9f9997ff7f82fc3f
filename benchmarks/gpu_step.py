"""Step time and model FLOPs utilisation (MFU) of a GPT-style model (GPT-2 small shape, about 124M parameters) in
bf16-mixed on one CUDA GPU: a raw PyTorch loop (autocast) next to fabric_kit's Fabric and loops' Trainer.

Target: Fabric within 2% of the raw loop's step time. The loops alternate in rounds over the same model and batch;
the figure is the median step time (CUDA-synchronised) after a warm-up. MFU counts 6 FLOPs per parameter per token
plus attention (as in nanoGPT), over the GPU's dense bf16 peak (known for A100 / H100 / H200, else `--peak-tflops`).
Without CUDA it prints why it is skipped and exits 0.

    python benchmarks/gpu_step.py [--steps 20] [--rounds 3] [--batch 8] [--peak-tflops 989]
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

VOCAB, CONTEXT, LAYERS, HEADS, WIDTH = 50304, 1024, 12, 12, 768
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.qkv, self.proj = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)
        self.mlp = nn.Sequential(nn.Linear(WIDTH, 4 * WIDTH), nn.GELU(), nn.Linear(4 * WIDTH, WIDTH))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, length, 3, HEADS, WIDTH // HEADS).transpose(1, 3).unbind(2)
        attention = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attention.transpose(1, 2).reshape(batch, length, WIDTH))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tokens, self.positions = nn.Embedding(VOCAB, WIDTH), nn.Embedding(CONTEXT, WIDTH)
        self.blocks = nn.Sequential(*[Block() for _ in range(LAYERS)])
        self.norm, self.head = nn.LayerNorm(WIDTH), nn.Linear(WIDTH, VOCAB, bias=False)
        self.head.weight = self.tokens.weight  # tied, as GPT-2

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tokens(idx) + self.positions(torch.arange(idx.shape[1], device=idx.device))
        return self.head(self.norm(self.blocks(x)))


def loss_of(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    idx, targets = batch
    return nn.functional.cross_entropy(model(idx).flatten(0, 1).float(), targets.flatten())


def new_model() -> nn.Module:
    torch.manual_seed(0)
    return GPT()


def new_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)


def seconds_per_step(step: Callable[[], None], steps: int) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def raw_loop(batch: tuple[torch.Tensor, torch.Tensor]) -> Callable[[int], float]:
    model = new_model().cuda()
    optimizer = new_optimizer(model)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_of(model, batch)
        loss.backward()
        optimizer.step()

    step()  # warm-up: kernels chosen, optimizer state and allocator filled
    return lambda steps: seconds_per_step(step, steps)


def fabric_loop(batch: tuple[torch.Tensor, torch.Tensor]) -> Callable[[int], float]:
    from fabric_kit import Fabric

    fabric = Fabric(accelerator="cuda", devices=1, precision="bf16-mixed")
    model = new_model()
    model, optimizer = fabric.setup(model, new_optimizer(model))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        fabric.backward(loss_of(model, batch))
        optimizer.step()

    step()
    return lambda steps: seconds_per_step(step, steps)


def trainer_loop(batch: tuple[torch.Tensor, torch.Tensor]) -> Callable[[int], float]:
    """Each measurement fits a fresh module for `steps + 1` batches of the same data; a callback times the steps
    after the first (warm-up) one, so the Trainer's set-up is not counted."""
    from torch.utils.data import DataLoader, TensorDataset

    import loops

    class Module(loops.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = new_model()

        def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
            return loss_of(self.model, batch)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return new_optimizer(self)

    class StepTimer(loops.Callback):
        def on_train_batch_start(self, trainer: loops.Trainer, module: Module, batch: object, batch_idx: int) -> None:
            if batch_idx == 1:
                torch.cuda.synchronize()
                self.start = time.perf_counter()

        def on_train_end(self, trainer: loops.Trainer, module: Module) -> None:
            torch.cuda.synchronize()
            self.seconds = (time.perf_counter() - self.start) / (trainer.global_step - 1)

    inputs, targets = (t.cpu() for t in batch)

    def measure(steps: int) -> float:
        timer = StepTimer()
        trainer = loops.Trainer(accelerator="cuda", devices=1, precision="bf16-mixed", max_epochs=1, logger=False,
                                callbacks=[timer], enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, num_sanity_val_steps=0)
        data = TensorDataset(inputs.repeat(steps + 1, 1), targets.repeat(steps + 1, 1))
        trainer.fit(Module(), DataLoader(data, batch_size=len(inputs)))
        return timer.seconds

    return measure


def peak_flops(requested: float | None) -> float | None:
    if requested is not None:
        return requested * 1e12
    name = torch.cuda.get_device_name()
    return next((tflops * 1e12 for key, tflops in PEAK_BF16_TFLOPS.items() if key in name), None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per loop and round (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--batch", type=int, default=8, help="sequences of 1024 tokens per step (default 8)")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, when not in the known list")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_step: skipped, CUDA is not available (this benchmark needs one CUDA GPU)")
        return

    torch.backends.cuda.matmul.allow_tf32 = True
    generator = torch.Generator(device="cuda").manual_seed(0)
    idx = torch.randint(0, VOCAB, (args.batch, CONTEXT + 1), device="cuda", generator=generator)
    batch = (idx[:, :-1], idx[:, 1:])
    loops_under_test = {"raw PyTorch": raw_loop(batch), "fabric_kit Fabric": fabric_loop(batch),
                        "loops Trainer": trainer_loop(batch)}
    times: dict[str, list[float]] = {name: [] for name in loops_under_test}
    for _ in range(args.rounds):
        for name, measure in loops_under_test.items():
            times[name].append(measure(args.steps))

    parameters = sum(p.numel() for p in new_model().parameters())
    flops_per_step = (6 * parameters + 12 * LAYERS * WIDTH * CONTEXT) * args.batch * CONTEXT
    peak = peak_flops(args.peak_tflops)
    raw = statistics.median(times["raw PyTorch"])
    print(f"{torch.cuda.get_device_name()}, GPT {parameters / 1e6:.0f}M parameters, bf16-mixed, "
          f"batch {args.batch}x{CONTEXT} tokens, median of {args.rounds} rounds x {args.steps} steps\n")
    print("| loop | ms / step | vs raw | MFU |")
    print("| --- | ---: | ---: | ---: |")
    for name, values in times.items():
        median = statistics.median(values)
        mfu = f"{flops_per_step / median / peak:.1%}" if peak else "unknown peak"
        print(f"| {name} | {median * 1e3:.1f} | {median / raw:.3f}× | {mfu} |")
    print(f"\nFabric / raw step time: {statistics.median(times['fabric_kit Fabric']) / raw:.3f} (target <= 1.02)")


if __name__ == "__main__":
    main()
