"""SpikeDetection (fabric_kit.spike): the same verdicts as Lightning's on one process; on two gloo processes a spike
on rank 1 only makes both ranks roll back and skip the same samples, ending bit-equal to a run that never saw them;
raise mode as Lightning's; the loader's exclusions and positions it builds on."""
import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabric_kit import Fabric
from fabric_kit.spike import SpikeDetection, TrainingSpikeException
from tests.spike_worker import BATCH, SIZE, STEPS

WORKER = "tests/spike_worker.py"


def test_a_spike_on_one_rank_rolls_both_back_to_the_weights_of_a_run_without_its_samples(run_ranks, tmp_path):
    _, (rank0, rank1) = run_ranks([WORKER, tmp_path], tmp_path, timeout=300)
    for result in (rank0, rank1):
        rollback, reference = result["rollback"], result["reference"]
        assert rollback["rollbacks"] == 1
        # The batch that spiked and the one before it, on both ranks alike, listed with their samples.
        assert [(r["batch_idx"], r["first"], r["stop"]) for r in rollback["skipped"]] == [(6, 24, 28), (7, 28, 32)]
        assert all(r["ranks"] == [1] and r["spike_batch_idx"] == 7 for r in rollback["skipped"])
        assert rollback["bad"] in rollback["skipped"][1]["samples"]
        assert all(len(r["samples"]) == 2 * BATCH for r in rollback["skipped"])
        assert rollback["record"] == rollback["skipped"]
        # Restored from the newest checkpoint before batch 6; the one saved after it (position 28) is gone.
        assert {r["checkpoint"] for r in rollback["skipped"]} == {"epoch=0-samples=24.ckpt"}
        assert "epoch=0-samples=28.ckpt" not in rollback["checkpoints"]
        assert json.loads((tmp_path / "rollback" / "skip_batches.json").read_text()) == [6, 7]
        # Bit-equal to the run whose loader never yielded the skipped samples, which saw the same batches.
        skipped = {s for r in rollback["skipped"] for s in r["samples"]}
        assert len(reference["seen"]) == STEPS and not skipped & {s for b in reference["seen"] for s in b}
        assert rollback["trained"] == reference["seen"]
        assert rollback["weights"].keys() == reference["weights"].keys()
        assert all(torch.equal(rollback["weights"][k], reference["weights"][k]) for k in reference["weights"])
        # A new process resumed from the newest checkpoint, or from one written before the rollback (the record
        # in the directory brings the exclusions), ends there too.
        assert (result["resumed"]["checkpoint"], result["resumed"]["loaded_at"]) == ("epoch=0-samples=48.ckpt", 10)
        assert result["resumed_before"]["loaded_at"] == 3
        for resumed in (result["resumed"], result["resumed_before"]):
            assert resumed["steps"] == STEPS
            assert all(torch.equal(resumed["weights"][k], reference["weights"][k]) for k in reference["weights"])
        # ... and not to the run that trained on them: the skip is what made the difference.
        assert not all(torch.equal(result["unskipped"][k], reference["weights"][k]) for k in reference["weights"])
        # Raise mode, as Lightning: every rank raises at the same batch, the file lists it and the one before.
        assert result["raised"]["raised_at"] == 7 and result["raised"]["skip_batches"] == [6, 7]
        assert result["raised"]["message"] == "Training spike detected in batch 7"
    assert rank0["rollback"]["skipped"] == rank1["rollback"]["skipped"]
    covered = sorted(s for b in rank0["rollback"]["trained"] + rank1["rollback"]["trained"] for s in b)
    assert covered == sorted(set(range(SIZE)) - {s for r in rank0["rollback"]["skipped"] for s in r["samples"]})


LOSSES = [1.0, 0.9, 0.95, 0.8, 5.0, 0.7, 0.75, float("nan"), 0.6, 0.65, 0.2, 3.0, 0.5, 0.55, float("inf"), 0.4]


@pytest.mark.parametrize("options", [dict(), dict(mode="max"), dict(atol=0.5, rtol=None), dict(atol=3.0),
                                     dict(finite_only=False), dict(window=2, warmup=4, rtol=0.5)])
def test_the_verdicts_are_lightnings(tmp_path, options):
    pytest.importorskip("torchmetrics")
    from lightning.fabric import Fabric as LightningFabric
    from lightning.fabric.utilities.spike import SpikeDetection as LightningSpikeDetection
    from lightning.fabric.utilities.spike import TrainingSpikeException as LightningSpike

    def verdicts(detector, fabric, spike_type):
        found = []
        for batch_idx, loss in enumerate(LOSSES):
            try:
                detector.on_train_batch_end(fabric, torch.tensor(loss), None, batch_idx)
            except spike_type:
                found.append(batch_idx)
        return found, detector.bad_batches

    ours = verdicts(SpikeDetection(exclude_batches_path=tmp_path / "ours.json", **options),
                    Fabric(accelerator="cpu", devices=1), TrainingSpikeException)
    theirs = verdicts(LightningSpikeDetection(exclude_batches_path=tmp_path / "theirs.json", **options),
                      LightningFabric(accelerator="cpu", devices=1), LightningSpike)
    assert ours == theirs and ours[0]
    assert json.loads((tmp_path / "ours.json").read_text()) == json.loads((tmp_path / "theirs.json").read_text())


def test_bad_arguments_are_refused_naming_the_value(tmp_path):
    with pytest.raises(ValueError, match="mode='low' is invalid; expected 'min' or 'max'"):
        SpikeDetection(mode="low")
    with pytest.raises(ValueError, match="window=0 is invalid"):
        SpikeDetection(window=0)
    with pytest.raises(ValueError, match=r"on_spike='skip' is invalid; expected one of \('raise', 'rollback'\)"):
        SpikeDetection(on_spike="skip")
    with pytest.raises(ValueError, match="on_spike='rollback' needs checkpoint_dir="):
        SpikeDetection(on_spike="rollback")
    fabric = Fabric(accelerator="cpu", devices=1)
    with pytest.raises(ValueError, match=r"one loss value per rank; got a tensor of shape \(2,\)"):
        SpikeDetection().on_train_batch_end(fabric, torch.ones(2), None, 0)
    with pytest.raises(ValueError, match="SpikeDetection.save needs checkpoint_dir="):
        SpikeDetection().save(fabric, {})
    with pytest.raises(FileNotFoundError, match="no checkpoint written by SpikeDetection.save in"):
        SpikeDetection(on_spike="rollback", checkpoint_dir=tmp_path).load(fabric, {})
    with pytest.raises(ValueError, match="the state has an entry 'spike_detection'"):
        SpikeDetection(checkpoint_dir=tmp_path).save(fabric, {"spike_detection": 1})
    rollback = SpikeDetection(on_spike="rollback", checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="needs state= holding exactly one dataloader .* found 0"):
        rollback.on_train_batch_end(fabric, torch.tensor(1.0), None, 0, state={"step": 0})


def test_with_no_checkpoint_to_go_back_to_a_rollback_raises(tmp_path):
    fabric = Fabric(accelerator="cpu", devices=1)
    loader = fabric.setup_dataloaders(DataLoader(TensorDataset(torch.arange(8.0)), batch_size=2))
    spike = SpikeDetection(warmup=1, on_spike="rollback", checkpoint_dir=tmp_path / "none",
                           exclude_batches_path=tmp_path)
    state = {"loader": loader}
    with pytest.raises(TrainingSpikeException, match="no checkpoint in .* before epoch 0, position 0"):
        for batch_idx, (loss, batch) in enumerate(zip([1.0, 100.0], loader, strict=False)):
            spike.on_train_batch_end(fabric, loss, batch, batch_idx, state=state)


def test_a_loader_leaves_out_excluded_positions_and_counts_around_them():
    fabric = Fabric(accelerator="cpu", devices=1)
    loader = fabric.setup_dataloaders(DataLoader(TensorDataset(torch.arange(12)), batch_size=2, shuffle=True))
    order = loader.indices(0, 0, 12)
    assert sorted(order) == list(range(12)) and order != list(range(12))
    loader.exclude(0, 2, 6)
    batches, spans = [], []
    for (batch,) in loader:
        batches.append(batch.tolist())
        spans.append(loader.last_batch())
        if len(batches) == 2:
            saved = loader.state_dict()
    assert batches == [order[0:2], order[6:8], order[8:10], order[10:12]]
    assert spans == [(0, 0, 2), (0, 6, 8), (0, 8, 10), (0, 10, 12)]
    assert saved["samples"] == 8 and saved["excluded"] == [[0, 2, 6]]
    resumed = fabric.setup_dataloaders(DataLoader(TensorDataset(torch.arange(12)), batch_size=2, shuffle=True))
    resumed.load_state_dict(saved)
    assert [b.tolist() for (b,) in resumed] == batches[2:]
    assert [b.tolist() for (b,) in loader] != batches  # the next epoch: its own order, nothing left out
    with pytest.raises(ValueError, match=r"exclude\(0, 5, 2\): expected an epoch >= 0 and positions"):
        loader.exclude(0, 5, 2)


def test_the_trainer_callback_raises_on_a_spike(tmp_path):
    """Rolling back inside fit: tests/loops/callbacks/test_spike.py."""
    from loops.callbacks import SpikeDetection as TrainerSpikeDetection
    from tests.helpers.loops import Regression, loader, make_trainer

    class Spiking(Regression):
        def training_step(self, batch, batch_idx):
            loss = nn.functional.mse_loss(self(batch[0]), batch[1])
            return loss * 1e4 if batch_idx == 5 else loss

    trainer = make_trainer(max_epochs=1, default_root_dir=tmp_path, callbacks=[TrainerSpikeDetection(rtol=10.0)])
    with pytest.raises(TrainingSpikeException, match="Training spike detected in batch 5"):
        trainer.fit(Spiking(), loader(n=32, batch_size=2))
    assert json.loads((tmp_path / "skip_batches.json").read_text()) == [4, 5]
