"""A loader with its own `state_dict` / `load_state_dict` (torchdata's StatefulDataLoader, 2 workers, shuffled)
is saved with `fabric.save` mid-epoch and resumed through them after the process was killed: the resumed run sees
exactly the batches the uninterrupted one saw after that point, on 1 and 2 processes."""
import pytest
import torch

from fabric_kit import Fabric

pytest.importorskip("torchdata.stateful_dataloader")
from tests.data.stateful_loader_worker import BATCH, EPOCHS, KILL_AT, SIZE  # noqa: E402  # needs torchdata

WORKER = "tests/data/stateful_loader_worker.py"


@pytest.mark.parametrize("devices", [1, 2])
def test_killed_mid_epoch_resumes_bit_exactly(run_ranks, tmp_path, devices):
    killed = run_ranks([WORKER, "first", devices, tmp_path], check=False)
    assert killed.returncode != 0, "the first run should have been killed"
    resumed = run_ranks([WORKER, "resume", devices, tmp_path], check=False)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    # Saved through the loader's own state_dict (its workers' snapshot), beside the wrapper's position.
    saved = Fabric(accelerator="cpu", devices=1).load(tmp_path / "checkpoint.ckpt")["loader"]
    assert saved["epoch"] == 0 and "_snapshot" in saved["loader"]
    seen = []
    for rank in range(devices):
        def load(phase, rank=rank):
            return torch.load(tmp_path / f"{phase}_rank{rank}.pt")

        uninterrupted = load("uninterrupted")
        assert len(uninterrupted) == EPOCHS * SIZE // BATCH // devices
        assert load("before_kill") == uninterrupted[:KILL_AT]
        assert load("resumed") == uninterrupted[KILL_AT:]
        seen.append(uninterrupted)
    # Shuffled, each epoch otherwise, and every rank its own shard of each epoch.
    per_epoch = len(seen[0]) // EPOCHS
    epochs = [sorted(i for rank in seen for batch in rank[e * per_epoch:(e + 1) * per_epoch] for i in batch)
              for e in range(EPOCHS)]
    assert epochs == [list(range(SIZE))] * EPOCHS
    assert seen[0][:per_epoch] != seen[0][per_epoch:]
    assert [i for batch in seen[0][:per_epoch] for i in batch] != sorted(i for b in seen[0][:per_epoch] for i in b)
