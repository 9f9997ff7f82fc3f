"""MLFlowLogger against a local folder store: metrics, parameters, run name and status read back through mlflow's
own client; a Trainer fit logs to it; checkpoints uploaded with log_model."""
import sys
from pathlib import Path

import pytest

pytest.importorskip("mlflow")

from loops.loggers import MLFlowLogger  # noqa: E402
from tests.helpers.loops import Regression, loader, make_trainer  # noqa: E402


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return tmp_path / "mlruns"


def _client(logger):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"file:{logger.save_dir}")


def test_metrics_params_and_status_read_back(store, clean_env):
    logger = MLFlowLogger("exp", run_name="first", save_dir=store, prefix="train")
    logger.log_hyperparams({"lr": 0.1, "optimizer": {"name": "adam"}})
    with pytest.warns(RuntimeWarning, match="'train-bad:name' is logged as 'train-badname'"):
        logger.log_metrics({"loss": 1.5, "bad:name": 2.0}, step=3)
    logger.log_metrics({"loss": 0.5}, step=7)
    logger.finalize("success")
    client = _client(logger)
    run = client.get_run(logger.run_id)
    assert [(m.step, m.value) for m in client.get_metric_history(logger.run_id, "train-loss")] == [(3, 1.5), (7, 0.5)]
    assert client.get_metric_history(logger.run_id, "train-badname")[0].value == 2.0
    assert run.data.params == {"lr": "0.1", "optimizer/name": "adam"}
    assert run.data.tags["mlflow.runName"] == "first" and run.info.status == "FINISHED"
    assert logger.name == logger.experiment_id and logger.version == logger.run_id
    assert logger.save_dir == str(store.resolve())


def _fit(logger, checkpoint):
    make_trainer(logger=logger, callbacks=[checkpoint], max_epochs=2, log_every_n_steps=1).fit(
        Regression(lr=0.05), loader(n=16, batch_size=4), loader(n=8, batch_size=4))


def _uploaded(logger, checkpoint):
    folder = Path(checkpoint.best_model_path).stem
    return {f.path for f in _client(logger).list_artifacts(logger.run_id, folder)}


def test_trainer_fit_logs_metrics_and_params(store, tmp_path, clean_env):
    from loops.callbacks import ModelCheckpoint

    logger = MLFlowLogger(save_dir=store)
    _fit(logger, ModelCheckpoint(dirpath=tmp_path / "checkpoints", monitor="val_loss"))
    client = _client(logger)
    assert [m.step for m in client.get_metric_history(logger.run_id, "train_loss")] == list(range(8))
    assert len(client.get_metric_history(logger.run_id, "val_loss")) == 2
    assert client.get_run(logger.run_id).data.params == {"lr": "0.05"}


def test_log_model_uploads_a_checkpoint_with_its_metadata(store, tmp_path, clean_env):
    from loops.callbacks import ModelCheckpoint

    logger = MLFlowLogger(save_dir=store, log_model="all")
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "checkpoints", monitor="val_loss")
    _fit(logger, checkpoint)
    logger.after_save_checkpoint(checkpoint)  # what ModelCheckpoint does after each save (see the test below)
    name = Path(checkpoint.best_model_path).name
    folder = Path(name).stem
    assert _uploaded(logger, checkpoint) == {f"{folder}/{name}", f"{folder}/aliases.txt", f"{folder}/metadata.yaml"}
    aliases = _client(logger).download_artifacts(logger.run_id, f"{folder}/aliases.txt", str(tmp_path))
    assert Path(aliases).read_text() == "['latest', 'best']"


def test_model_checkpoint_hands_its_files_to_log_model(store, tmp_path, clean_env):
    from loops.callbacks import ModelCheckpoint

    logger = MLFlowLogger(save_dir=store, log_model=True)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "checkpoints", monitor="val_loss")
    _fit(logger, checkpoint)
    assert _uploaded(logger, checkpoint)


def test_failed_runs_are_marked_failed(store, clean_env):
    logger = MLFlowLogger(save_dir=store)
    logger.log_metrics({"x": 1.0}, step=0)
    logger.finalize("failed")
    assert _client(logger).get_run(logger.run_id).info.status == "FAILED"


def test_bad_settings_and_missing_mlflow_are_named(store, monkeypatch):
    with pytest.raises(ValueError, match="log_model='best'"):
        MLFlowLogger(save_dir=store, log_model="best")
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(ImportError, match=r"pip install 'fabric_kit\[mlflow\]'"):
        MLFlowLogger(save_dir=store)
