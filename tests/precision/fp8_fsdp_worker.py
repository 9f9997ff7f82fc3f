"""The script behind test_fp8.py's FSDP2 case: Float8Precision under strategy "fsdp" on 2 CPU processes (gloo).

    python fp8_fsdp_worker.py OUT_DIR

The same training runs with FSDP2's float8 all-gather (`Float8Precision(enable_fsdp_float8_all_gather=True)`, the
optimizer set up together with the model) and without it; the all-gather run saves a full checkpoint, which a fresh
all-gather model loads. Rank r writes OUT_DIR/rank<r>.pt: both runs' losses, the dtypes FSDP gathered the weights in
while training, and the fresh model's outputs before and after loading beside the trained model's.
"""
import functools
import os
import sys

import torch
from torch import nn
from torchao.float8.fsdp_utils import WeightWithDynamicFloat8CastTensor

from fabric_kit import Fabric
from fabric_kit.plugins.precision import Float8Precision
from fabric_kit.strategies.fsdp import FSDPStrategy

STEPS = 6


def build(fabric):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32))
    return fabric.setup(model, torch.optim.Adam(model.parameters(), lr=1e-2))


def train(all_gather, gathered_dtypes, out_dir):
    fabric = Fabric(accelerator="cpu", devices=2, strategy=FSDPStrategy(state_dict_type="full"),
                    plugins=Float8Precision(enable_fsdp_float8_all_gather=all_gather))
    fabric.launch()
    model, optimizer = build(fabric)
    x = torch.randn(16, 32, generator=torch.Generator().manual_seed(fabric.global_rank))
    losses = []
    for _ in range(STEPS):
        loss = nn.functional.mse_loss(model(x), x)
        optimizer.zero_grad()
        fabric.backward(loss)
        optimizer.step()
        losses.append(loss.item())
    result = {"losses": losses, "gathered_dtypes": list(gathered_dtypes)}
    if all_gather:
        fabric.save(os.path.join(out_dir, "fp8.ckpt"), {"model": model, "optimizer": optimizer})
        fresh, fresh_optimizer = build(fabric)
        with torch.no_grad():
            for parameter in fresh.parameters():
                parameter.add_(1.0)
        result["trained"] = model(x).detach()
        result["before_load"] = fresh(x).detach()
        fabric.load(os.path.join(out_dir, "fp8.ckpt"), {"model": fresh, "optimizer": fresh_optimizer})
        result["after_load"] = fresh(x).detach()
    return fabric, result


def main(out_dir):
    gathered_dtypes = []
    pre_all_gather = WeightWithDynamicFloat8CastTensor.fsdp_pre_all_gather

    @functools.wraps(pre_all_gather)  # FSDP2 checks the signature
    def recording(self, *args, **kwargs):  # FSDP2 asks the weight what to all-gather: record what it answers
        tensors, metadata = pre_all_gather(self, *args, **kwargs)
        gathered_dtypes.extend(t.dtype for t in tensors)
        return tensors, metadata

    WeightWithDynamicFloat8CastTensor.fsdp_pre_all_gather = recording
    fabric, with_gather = train(True, gathered_dtypes, out_dir)
    gathered_dtypes.clear()
    _, without_gather = train(False, gathered_dtypes, out_dir)
    torch.save({"all_gather": with_gather, "plain": without_gather},
               os.path.join(out_dir, f"rank{fabric.global_rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
