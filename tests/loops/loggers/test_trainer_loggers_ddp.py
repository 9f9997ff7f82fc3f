"""Loggers and self.log(sync_dist=True) on 2 real gloo processes: both ranks agree on version_N (rank 0 decides),
only rank 0 writes, and synced logging from step and epoch hooks finishes, over uneven validation shards too."""
from pathlib import Path

from tests.helpers.events import read_scalars

SCRIPT = Path(__file__).parent / "scripts" / "loops_ddp_loggers.py"


def test_ddp_ranks_agree_on_the_version_and_synced_logging_finishes(run_ranks, tmp_path):
    (tmp_path / "lightning_logs" / "version_0").mkdir(parents=True)  # an earlier run's folder
    _, ranks = run_ranks([SCRIPT, tmp_path], tmp_path, timeout=180)
    version_1 = tmp_path / "lightning_logs" / "version_1"
    assert [r["log_dir"] for r in ranks] == [str(version_1)] * 2 and [r["version"] for r in ranks] == [1, 1]
    assert [r["best"] for r in ranks] == [str(version_1 / "checkpoints" / "epoch=1-step=8.ckpt")] * 2
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_0", "version_1"]
    for r in ranks:
        metrics = r["metrics"]
        assert metrics["rank_step_epoch"] == metrics["rank_epoch"] == 0.5  # mean over the ranks' 0 and 1
        assert metrics["rank_max"] == 1.0
        assert metrics["val_rows"] == 9.0  # summed over both shards: every row once
    scalars = read_scalars(version_1)
    assert [value for _, value in scalars["rank_step_step"]] == [0.5] * 8  # each step synced
    assert [step for step, _ in scalars["rank_epoch"]] == [3, 7]
    assert [value for _, value in scalars["val_rows_epoch"]] == [9.0, 9.0]


def test_fewer_validation_rows_than_processes_still_finishes(run_ranks, tmp_path):
    """One validation row, two processes: the row is repeated on rank 1 (padded), so both ranks validate and join
    the synced epoch values instead of rank 0 waiting for a rank that had no batch."""
    _, ranks = run_ranks([SCRIPT, tmp_path, 1], tmp_path, timeout=180)
    for r in ranks:
        assert r["metrics"]["val_rows"] == 2.0 and r["metrics"]["rank_max"] == 1.0


def test_ddp_spawn_leaves_the_launching_process_on_the_ranks_version(clean_env, tmp_path):
    import loops as L
    from tests.helpers.loops import Regression, loader

    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1, default_root_dir=tmp_path,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(Regression(), loader(n=16, batch_size=4))
    version_0 = tmp_path / "lightning_logs" / "version_0"
    assert trainer.log_dir == str(version_0) and trainer.logger.version == 0
    assert (version_0 / "hparams.yaml").read_text() == "lr: 0.1\n" and (version_0 / "checkpoints").is_dir()
    assert sorted(p.name for p in version_0.parent.iterdir()) == ["version_0"]
