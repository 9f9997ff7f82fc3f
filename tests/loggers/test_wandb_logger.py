"""WandbLogger fully offline: the offline run's own file holds the logged metrics (against trainer/global_step)
and hyperparameters; a Trainer fit reaches it too. No network, no login."""
import sys

import pytest

wandb = pytest.importorskip("wandb")

from loops.loggers import WandbLogger  # noqa: E402
from tests.helpers.wandb_records import run_records  # noqa: E402


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    yield tmp_path
    if wandb.run is not None:
        wandb.finish()


def _finished_run_file(logger, save_dir):
    """Finish the run and stop wandb's service process: only then is the run file complete on disk."""
    logger.experiment.finish()
    wandb.teardown()
    (run_file,) = save_dir.glob("wandb/offline-run-*/run-*.wandb")
    return run_file


def test_offline_run_holds_metrics_and_config(offline, clean_env):
    logger = WandbLogger(project="p", name="first", save_dir=offline, offline=True, prefix="train")
    logger.log_hyperparams({"lr": 0.1, "optimizer": {"name": "adam"}, "fn": len})
    logger.log_metrics({"loss": 1.5}, step=3)
    logger.log_metrics({"loss": 0.5}, step=7)
    assert logger.name == "p" and logger.version == logger.experiment.id and logger.save_dir == str(offline)
    history, config = run_records(_finished_run_file(logger, offline))
    assert [(row["trainer/global_step"], row["train-loss"]) for row in history] == [(3, 1.5), (7, 0.5)]
    assert config == {"lr": 0.1, "optimizer": {"name": "adam"}, "fn": "len"}


def test_trainer_fit_logs_to_an_offline_run(offline, clean_env):
    from tests.helpers.loops import Regression, loader, make_trainer

    logger = WandbLogger(project="p", save_dir=offline, offline=True)
    make_trainer(logger=logger, max_epochs=2, log_every_n_steps=1).fit(Regression(lr=0.05), loader(n=16, batch_size=4))
    history, config = run_records(_finished_run_file(logger, offline))
    losses = [(row["trainer/global_step"], row["epoch"]) for row in history if "train_loss" in row]
    assert losses == [(step, step // 4) for step in range(8)]  # 4 batches per epoch, logged every step
    assert config == {"lr": 0.05}


def test_bad_settings_are_named(offline):
    with pytest.raises(ValueError, match="offline=True"):
        WandbLogger(offline=True, log_model=True)
    with pytest.raises(ValueError, match="log_model='best'"):
        WandbLogger(log_model="best")


def test_missing_wandb_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match=r"pip install 'fabric_kit\[wandb\]'"):
        WandbLogger(project="p")
