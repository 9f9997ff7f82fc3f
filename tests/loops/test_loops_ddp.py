"""The Trainer on 2 real gloo processes: strategy="ddp" re-runs the script for rank 1 (so it runs as a subprocess,
as a user's script would), and "ddp_spawn" from inside this process."""
from pathlib import Path

import pytest
import torch

from loops_helpers import Regression, loader, make_trainer

SCRIPT = Path(__file__).parent / "scripts" / "loops_ddp_fit.py"


@pytest.mark.parametrize("accumulate", [1, 2])
def test_ddp_script_two_processes(run_ranks, tmp_path, accumulate):
    _, ranks = run_ranks([SCRIPT, tmp_path, accumulate], tmp_path, timeout=180)
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    # 32 samples / 2 ranks / batch 4 = 4 batches per epoch; accumulation skips the gradient sync in between
    assert all(r["global_step"] == 8 // accumulate for r in ranks)
    assert torch.equal(ranks[0]["weight"], ranks[1]["weight"])
    steps = 8 // accumulate
    assert ranks[0]["best"] == ranks[1]["best"] == str(tmp_path / "checkpoints" / f"epoch=1-step={steps}.ckpt")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [f"epoch=1-step={steps}.ckpt", "last.ckpt"]
    assert all(r["resumed_step"] == steps * 3 // 2 for r in ranks)
    assert torch.equal(ranks[0]["resumed_weight"], ranks[1]["resumed_weight"])
    assert ranks[0]["gathered"] == [0, 1]
    for r in ranks:
        assert r["metrics"]["rank_mean"].item() == 0.5  # (0 + 1) / 2, synced
        assert r["validated"] == [{"val_count": 10.0}]  # every validation sample counted exactly once
    # gradients are averaged over ranks: the same as one process with the two shards' batches together
    torch.manual_seed(0)
    single = Regression(lr=0.1)
    make_trainer(max_epochs=2, limit_val_batches=0).fit(single, loader(n=32, batch_size=8 * accumulate))
    assert torch.allclose(single.layer.weight, ranks[0]["weight"], atol=1e-6)


def test_ddp_spawn_returns_weights_to_the_launching_process(clean_env, monkeypatch):
    # clean_env removed MASTER_PORT: the launching process picks a free port itself
    torch.manual_seed(0)
    model = Regression(lr=0.1)
    before = model.layer.weight.detach().clone()
    trainer = make_trainer(devices=2, strategy="ddp_spawn", max_epochs=1, limit_val_batches=0)
    trainer.fit(model, loader(n=16, batch_size=4))
    assert trainer.global_step == 2 and not torch.equal(model.layer.weight, before)


def test_fsdp_script_two_processes(run_ranks, tmp_path):
    _, ranks = run_ranks([SCRIPT.parent / "loops_fsdp_fit.py", tmp_path], tmp_path, timeout=180)
    assert all(r["global_step"] == 8 for r in ranks)
    assert all({"train_loss", "val_loss"} <= set(r["metrics"]) for r in ranks)
    for r in ranks:  # resumed from a sharded checkpoint (weights and momentum) == uninterrupted
        assert all(torch.allclose(r["resumed"][k], r["reference"][k], atol=1e-6) for k in r["reference"])
