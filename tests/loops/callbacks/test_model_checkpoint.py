"""ModelCheckpoint on real fits: exactly the top-k files by score plus last.ckpt, filename templates, last.ckpt as a
link, step and time triggers, the truly last state at the end, version suffixes, and resume keeping the ranking."""
import math
import os
from datetime import timedelta

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import loops as L
from fabric_kit.checkpoint import read_checkpoint
from loops.callbacks import ModelCheckpoint
from tests.helpers.loops import Regression, loader, make_trainer
from tests.helpers.loops import ScriptedLoss as Scripted

# Several tests write into a folder on purpose a second time.
pytestmark = pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")


class ListingTrainer(L.Trainer):
    """Records the checkpoint folder right after each save."""

    listings: list

    def save_checkpoint(self, filepath, weights_only=False, storage_options=None):
        super().save_checkpoint(filepath, weights_only, storage_options)
        self.listings.append(sorted(os.listdir(os.path.dirname(filepath))))


def _fit(scores, checkpoint, epochs=None, **kwargs):
    trainer = make_trainer(max_epochs=epochs or len(scores), callbacks=[checkpoint], num_sanity_val_steps=0, **kwargs)
    trainer.fit(Scripted(scores), loader(), loader(n=8))
    return trainer


def _step(path):
    return read_checkpoint(path)["global_step"]


@settings(max_examples=6, deadline=None)
@given(scores=st.lists(st.sampled_from([0.5, 1.0, 2.0, 3.0, 4.0, math.nan]), min_size=1, max_size=5),
       k=st.integers(1, 3), mode=st.sampled_from(["min", "max"]))
def test_keeps_exactly_the_top_k_by_score(tmp_path_factory, scores, k, mode):
    folder = tmp_path_factory.mktemp("top_k")
    checkpoint = ModelCheckpoint(dirpath=folder, monitor="val_loss", mode=mode, save_top_k=k, save_last=True,
                                 filename="{epoch}")
    _fit(scores, checkpoint)
    # NaN ranks below every number; among equal scores the earlier file stays
    rank = [math.inf if math.isnan(s) else (s if mode == "min" else -s) for s in scores]
    kept = sorted(sorted(range(len(scores)), key=lambda e: (rank[e], e))[:k])
    assert sorted(os.listdir(folder)) == sorted([f"epoch={e}.ckpt" for e in kept] + ["last.ckpt"])
    assert set(checkpoint.best_k_models) == {str(folder / f"epoch={e}.ckpt") for e in kept}
    best = min(kept, key=lambda e: (rank[e], e))
    assert checkpoint.best_model_path == str(folder / f"epoch={best}.ckpt")
    assert _step(folder / "last.ckpt") == 8 * len(scores)


def test_new_file_is_in_place_before_the_one_it_replaces_goes(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=1, filename="{epoch}")
    trainer = ListingTrainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                             max_epochs=3, callbacks=[checkpoint], num_sanity_val_steps=0)
    trainer.listings = []
    trainer.fit(Scripted([3.0, 2.0, 1.0]), loader(), loader(n=8))
    assert trainer.listings == [["epoch=0.ckpt"], ["epoch=0.ckpt", "epoch=1.ckpt"], ["epoch=1.ckpt", "epoch=2.ckpt"]]
    assert os.listdir(tmp_path) == ["epoch=2.ckpt"]


def test_filename_template(tmp_path):
    named = ModelCheckpoint(dirpath=tmp_path / "a", monitor="val_loss", filename="{epoch:02d}-{val_loss:.2f}")
    plain = ModelCheckpoint(dirpath=tmp_path / "b", monitor="val_loss", filename="{epoch:02d}-{val_loss:.2f}",
                            auto_insert_metric_name=False)
    trainer = make_trainer(max_epochs=2, callbacks=[named, plain], num_sanity_val_steps=0)
    trainer.fit(Scripted([0.5, 0.123]), loader(), loader(n=8))
    assert os.listdir(tmp_path / "a") == ["epoch=01-val_loss=0.12.ckpt"]
    assert os.listdir(tmp_path / "b") == ["01-0.12.ckpt"]
    metrics = {"epoch": torch.tensor(3), "step": torch.tensor(7)}
    assert ModelCheckpoint().format_checkpoint_name(metrics) == "epoch=3-step=7.ckpt"
    assert ModelCheckpoint(dirpath=tmp_path).format_checkpoint_name(metrics, ver=2) == str(tmp_path /
                                                                                            "epoch=3-step=7-v2.ckpt")


def test_save_last_link_points_at_the_newest_file_or_holds_the_state_itself(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_last="link", filename="{epoch}")
    _fit([2.0, 1.0], checkpoint)
    last = tmp_path / "last.ckpt"
    assert os.path.islink(last) and os.readlink(last) == "epoch=1.ckpt" and _step(last) == 16
    # epoch 2 does not enter the top-1: last.ckpt becomes a file of its own, holding epoch 2's state
    resumed = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_last="link", filename="{epoch}")
    make_trainer(max_epochs=3, callbacks=[resumed], num_sanity_val_steps=0).fit(
        Scripted([5.0]), loader(), loader(n=8), ckpt_path=str(last))
    assert not os.path.islink(last) and _step(last) == 24
    assert sorted(os.listdir(tmp_path)) == ["epoch=1.ckpt", "last.ckpt"]


def test_step_trigger_and_the_truly_last_state(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1, save_last=True)
    make_trainer(max_steps=10, callbacks=[checkpoint], limit_val_batches=0).fit(Regression(), loader())
    assert sorted(os.listdir(tmp_path)) == ["epoch=0-step=3.ckpt", "epoch=0-step=6.ckpt", "epoch=1-step=9.ckpt",
                                            "last.ckpt"]
    assert _step(tmp_path / "last.ckpt") == 10  # saved when training ended, between triggers


def test_time_trigger(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, train_time_interval=timedelta(0), save_top_k=-1)
    make_trainer(max_steps=4, callbacks=[checkpoint], limit_val_batches=0).fit(Regression(), loader())
    assert sorted(os.listdir(tmp_path)) == [f"epoch=0-step={s}.ckpt" for s in range(1, 5)]


def test_version_counter(tmp_path):
    for _ in range(2):
        _fit([1.0], ModelCheckpoint(dirpath=tmp_path, save_last=True))
    assert sorted(os.listdir(tmp_path)) == ["epoch=0-step=8-v1.ckpt", "epoch=0-step=8.ckpt", "last-v1.ckpt",
                                            "last.ckpt"]
    _fit([1.0], ModelCheckpoint(dirpath=tmp_path, save_last=True, enable_version_counter=False))
    assert len(os.listdir(tmp_path)) == 4  # overwritten in place


def test_resume_keeps_the_ranking(tmp_path):
    first = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2, save_last=True, filename="{epoch}")
    scores = [3.0, 1.0, 2.0, 0.5, 4.0]
    _fit(scores, first, epochs=3)
    assert sorted(os.listdir(tmp_path)) == ["epoch=1.ckpt", "epoch=2.ckpt", "last.ckpt"]
    second = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2, save_last=True, filename="{epoch}")
    trainer = make_trainer(max_epochs=5, callbacks=[second], num_sanity_val_steps=0)
    trainer.fit(Scripted(scores), loader(), loader(n=8), ckpt_path=str(tmp_path / "last.ckpt"))
    # epoch 3 (0.5) pushes out epoch 2 (2.0); epoch 4 (4.0) enters nothing
    assert sorted(os.listdir(tmp_path)) == ["epoch=1.ckpt", "epoch=3.ckpt", "last.ckpt"]
    assert second.best_model_path == str(tmp_path / "epoch=3.ckpt") and second.best_model_score.item() == 0.5
    assert second.kth_best_model_path == str(tmp_path / "epoch=1.ckpt")


@pytest.mark.parametrize("kwargs, message", [
    (dict(every_n_train_steps=2, every_n_epochs=1), r"\['every_n_train_steps', 'every_n_epochs'\]; pass at most one"),
    (dict(save_last="always"), r"save_last='always'\) is not valid; accepted: None, False, True, 'link'"),
    (dict(save_top_k=3), r"save_top_k=3\) ranks checkpoints by a metric"),
    (dict(mode="best"), r"mode='best'\) is not valid"),
    (dict(every_n_train_steps=-1), r"every_n_train_steps=-1\) is not valid"),
    (dict(dirpath="memory://checkpoints"), r"dirpath='memory://checkpoints'\): fsspec URLs are not supported"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelCheckpoint(**kwargs)


def test_a_resumed_run_saving_elsewhere_leaves_the_first_runs_files(tmp_path):
    _fit([1.0, 1.0], ModelCheckpoint(dirpath=tmp_path / "first", save_last=True))
    second = ModelCheckpoint(dirpath=tmp_path / "second")
    with pytest.warns(UserWarning, match="dirpath changed .* the saved top-k ranking is not restored"):
        make_trainer(max_epochs=3, callbacks=[second], num_sanity_val_steps=0).fit(
            Scripted([1.0]), loader(), loader(n=8), ckpt_path=str(tmp_path / "first" / "last.ckpt"))
    assert sorted(os.listdir(tmp_path / "first")) == ["epoch=1-step=16.ckpt", "last.ckpt"]
    assert os.listdir(tmp_path / "second") == ["epoch=2-step=24.ckpt"]


def test_save_on_exception(tmp_path):
    class Failing(Scripted):
        def training_step(self, batch, batch_idx):
            if self.global_step == 11:
                raise ValueError("bad batch")
            return super().training_step(batch, batch_idx)

    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_on_exception=True, filename="{step}")
    trainer = make_trainer(max_epochs=3, callbacks=[checkpoint], num_sanity_val_steps=0)
    with pytest.raises(ValueError, match="bad batch"):
        trainer.fit(Failing([1.0]), loader(), loader(n=8))
    assert sorted(os.listdir(tmp_path)) == ["step=11.ckpt", "step=8.ckpt"]
    assert _step(tmp_path / "step=11.ckpt") == 11
