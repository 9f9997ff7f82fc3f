"""The variables a launcher sets for its ranks reach them, and the ones the launching process does not need are not
left in its environment after the run (LOCAL_WORLD_SIZE: with `ddp` the launching process is rank 0)."""
import json

import pytest
from launcher_jobs import finish, start


@pytest.mark.parametrize("launcher", ["ddp", "ddp_fork"])
def test_local_world_size_reaches_the_ranks_only(launcher, tmp_path, job_environment):
    status, output, _ = finish(start(launcher, tmp_path, "none", 0, env=job_environment()))
    assert status == 0, output
    ranks = [json.loads((tmp_path / f"environ{rank}.json").read_text()) for rank in (0, 1)]
    after = json.loads((tmp_path / "environ_after.json").read_text())
    assert [r["RANK"] for r in ranks] == ["0", "1"] and all(r["WORLD_SIZE"] == "2" for r in ranks)
    assert ranks[1]["LOCAL_WORLD_SIZE"] == "2"
    assert after["LOCAL_WORLD_SIZE"] is None, after
