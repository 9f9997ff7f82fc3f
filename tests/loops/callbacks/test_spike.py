"""The Trainer's SpikeDetection with on_spike="rollback": on 2 gloo processes, in one launch, a spike on rank 1 only
makes both ranks roll back inside `fit` (to a ModelCheckpoint file, or to the callback's own checkpoints) and skip
the same samples; the fit ends bit-equal to a fit that never saw them, and so does a fit resumed from a checkpoint
written before the rollback. Raise mode is tested in tests/test_spike.py."""
from pathlib import Path

import pytest
import torch

from loops.callbacks import SpikeDetection
from tests.helpers.loops import Regression, loader, make_trainer
from tests.spike_worker import BATCH, SIZE

SCRIPT = Path(__file__).parent / "scripts" / "spike_fit.py"


def test_a_spike_on_one_rank_rolls_both_back_inside_fit_to_the_weights_of_a_fit_without_its_samples(run_ranks,
                                                                                                      tmp_path):
    _, (rank0, rank1) = run_ranks([SCRIPT, tmp_path], tmp_path, timeout=400)
    for result in (rank0, rank1):
        reference = result["reference"]
        for name, target in (("model_checkpoint", "epoch=0-step=6.ckpt"), ("own", "epoch=0-samples=24.ckpt")):
            fit = result[name]
            # the batch that spiked (7) and the one before it, on both ranks alike, listed with their samples
            assert [(r["batch_idx"], r["first"], r["stop"]) for r in fit["skipped"]] == [(6, 24, 28), (7, 28, 32)]
            assert all(r["ranks"] == [1] and r["spike_batch_idx"] == 7 for r in fit["skipped"]), name
            assert fit["bad"] in fit["skipped"][1]["samples"]
            assert all(len(r["samples"]) == 2 * BATCH for r in fit["skipped"])
            assert fit["record"] == fit["skipped"] and fit["skip_batches"] == [6, 7]
            # restored from the newest checkpoint before batch 6, then the fit ran to the end of the epoch
            assert {r["checkpoint"] for r in fit["skipped"]} == {target}, name
            assert target in fit["checkpoints"] and fit["global_step"] == SIZE // (2 * BATCH) - 2
            # bit-equal to the fit whose loader never yielded the skipped samples
            assert fit["weights"].keys() == reference.keys()
            assert all(torch.equal(fit["weights"][k], reference[k]) for k in reference), name
        same = [{k: v for k, v in r.items() if k != "checkpoint"} for r in result["model_checkpoint"]["skipped"]]
        assert [{k: v for k, v in r.items() if k != "checkpoint"} for r in result["own"]["skipped"]] == same
        # a new fit resumed from a checkpoint written before the rollback: the record brings the exclusions back
        resumed = result["resumed"]
        assert resumed["global_step"] == SIZE // (2 * BATCH) - 2
        assert resumed["skipped"] == result["model_checkpoint"]["skipped"]
        assert all(torch.equal(resumed["weights"][k], reference[k]) for k in reference)
        # ... and not to the fit that trained on them: the skip is what made the difference
        assert not all(torch.equal(result["unskipped"][k], reference[k]) for k in reference)
    assert rank0["model_checkpoint"]["skipped"] == rank1["model_checkpoint"]["skipped"]
    assert torch.equal(rank0["reference"]["net.0.weight"], rank1["reference"]["net.0.weight"])


def test_rollback_without_checkpoints_or_with_bad_arguments_is_refused(tmp_path):
    with pytest.raises(ValueError, match="on_spike='skip' is invalid; expected one of"):
        SpikeDetection(on_spike="skip")
    with pytest.raises(ValueError, match="every_n_train_steps=0 is invalid"):
        SpikeDetection(on_spike="rollback", checkpoint_dir=tmp_path, every_n_train_steps=0)
    with pytest.raises(ValueError, match="every_n_train_steps= needs checkpoint_dir="):
        SpikeDetection(on_spike="rollback", every_n_train_steps=2)
    trainer = make_trainer(max_epochs=1, default_root_dir=tmp_path, callbacks=[SpikeDetection(on_spike="rollback")])
    with pytest.raises(ValueError, match="has no checkpoint to roll back to: add a ModelCheckpoint"):
        trainer.fit(Regression(), loader(n=8, batch_size=2))
