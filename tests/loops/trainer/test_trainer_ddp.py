"""The Trainer on 2 real gloo processes: strategy="ddp" re-runs the script for rank 1 (so it runs as a subprocess,
as a user's script would), and "ddp_spawn" from inside this process."""
from pathlib import Path

import pytest
import torch

from tests.helpers.loops import MomentumRegression, Regression, loader, make_trainer

SCRIPT = Path(__file__).parent / "scripts" / "loops_ddp_fit.py"


ACCUMULATE = [1, 2]


@pytest.fixture(scope="module")
def ddp_fits(run_ranks, tmp_path_factory):
    """(the folder, every rank's record by accumulate_grad_batches) of one launch of the script, whose runs for
    each of ACCUMULATE follow one another in the same 2 processes."""
    out = tmp_path_factory.mktemp("ddp_fit")
    return out, run_ranks([SCRIPT, out, *ACCUMULATE], out, timeout=300)[1]


@pytest.mark.parametrize("accumulate", ACCUMULATE)
def test_ddp_script_two_processes(ddp_fits, accumulate):
    out, records = ddp_fits
    ranks = [record[accumulate] for record in records]
    tmp_path = out / f"accumulate-{accumulate}"
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    # 32 samples / 2 ranks / batch 4 = 4 batches per epoch; accumulation skips the gradient sync in between
    assert all(r["global_step"] == 8 // accumulate for r in ranks)
    assert torch.equal(ranks[0]["weight"], ranks[1]["weight"])
    steps = 8 // accumulate
    assert ranks[0]["best"] == ranks[1]["best"] == str(tmp_path / "checkpoints" / f"epoch=1-step={steps}.ckpt")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [f"epoch=1-step={steps}.ckpt", "last.ckpt"]
    assert all(r["resumed_step"] == steps * 3 // 2 for r in ranks)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt")  # Lightning's layout: its Trainer can resume it
    assert len(last["optimizer_states"]) == 1 and "pytorch-lightning_version" in last
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
    torch.manual_seed(0)
    single = Regression(lr=0.1)  # each rank steps its own weights (not one shared copy): one process, batch 8
    make_trainer(max_epochs=1, limit_val_batches=0).fit(single, loader(n=16, batch_size=8))
    assert torch.allclose(model.layer.weight, single.layer.weight, atol=1e-6)


def test_fsdp_script_two_processes(run_ranks, tmp_path):
    single = make_trainer(max_epochs=1, limit_val_batches=0)
    single.fit(MomentumRegression(), loader(n=32, batch_size=8))
    single.save_checkpoint(tmp_path / "single.ckpt")
    _, ranks = run_ranks([SCRIPT.parent / "loops_fsdp_fit.py", tmp_path], tmp_path, timeout=180)
    assert all("holds the optimizer states as one list" in r["refused"] for r in ranks)
    assert all(r["global_step"] == 8 for r in ranks)
    assert all({"train_loss", "val_loss"} <= set(r["metrics"]) for r in ranks)
    for r in ranks:  # resumed from a sharded checkpoint (weights and momentum) == uninterrupted
        assert all(torch.allclose(r["resumed"][k], r["reference"][k], atol=1e-6) for k in r["reference"])
    # The full-state file (each optimizer its own entry) resumes on one process, with the two ranks' batches as one
    model = MomentumRegression()
    make_trainer(max_epochs=2, num_sanity_val_steps=0).fit(model, loader(n=32, batch_size=8), loader(n=8),
                                                            ckpt_path=tmp_path / "fsdp_full.ckpt")
    reference = ranks[0]["reference"]
    assert all(torch.allclose(model.state_dict()[k], reference[k], atol=1e-6) for k in reference)


def test_datamodule_seed_on_two_processes_then_test_and_predict(run_ranks, tmp_path):
    _, ranks = run_ranks([SCRIPT.parent / "loops_ddp_datamodule.py", tmp_path], tmp_path, timeout=180)
    assert [r["prepared"] for r in ranks] == [True, False]  # prepare_data once per node
    assert all(r["train_batches"] == 4 * 96 // 2 // 8 and r["global_step"] == 24 for r in ranks)
    assert torch.equal(ranks[0]["weight"], ranks[1]["weight"])
    # torchmetrics syncs itself: every rank sees the accuracy over all 24 validation samples, and the sanity
    # check's updates were reset before epoch 0 (else the first value would count 48 samples)
    assert ranks[0]["val_acc"] == ranks[1]["val_acc"] and all(round(a * 24, 4) % 1 == 0 for a in ranks[0]["val_acc"])
    assert ranks[0]["fit_metrics"]["val_loss"] == ranks[1]["fit_metrics"]["val_loss"]  # sync_dist
    assert ranks[0]["fit_metrics"]["train_loss_epoch"] != ranks[1]["fit_metrics"]["train_loss_epoch"]  # not synced
    # rank_zero_only: logged on rank 0 alone with sync_dist=True, no collective (no hang), absent elsewhere
    assert ranks[0]["fit_metrics"]["rank0_only"] == 10.0 and "rank0_only" not in ranks[1]["fit_metrics"]
    assert all(r["collectives"] == ("from rank 0", [0, 2], True) for r in ranks)  # trainer.strategy
    assert ranks[0]["tested"] == ranks[1]["tested"] and ranks[0]["tested"][0]["test_acc"] > 0.9
    # predict: as in Lightning, each rank returns (and its BasePredictionWriter writes) its own share, each sample once
    for r in ranks:
        assert [p for batch in r["predictions"] for p in batch] == [p for _, out in r["written"] for p in out]
    assert sorted(i for r in ranks for indices, _ in r["written"] for i in indices) == list(range(30))
