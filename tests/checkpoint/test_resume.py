"""Acceptance: runs SIGKILLed mid-epoch resume from their latest checkpoint and end bit-identical to runs that never
stopped (one process, with and without dataloader workers; two DDP processes; elastic restarts), and a run saved
on two processes resumes on one at the same global sample."""
import importlib.util
from collections import Counter

import pytest
import torch

from tests.helpers.checkpoint_runs import assert_same_weights, run_training
from tests.helpers.processes import free_port

ONE_PROCESS = dict(N=48, BATCH=4, TOTAL=36, SAVE_EVERY=7)  # 12 steps an epoch; checkpoints at 7, 14, ...
TWO_PROCESSES = dict(N=48, BATCH=4, TOTAL=18, SAVE_EVERY=7, STRATEGY="ddp", DEVICES=2)  # 6 steps an epoch


def _train(tmp_path, name, config, *launcher, expect=0):
    out = tmp_path / f"{name}.pt"
    proc = run_training({**config, "CKPT_DIR": tmp_path / name, "OUT": out}, *launcher)
    assert proc.returncode == expect, f"exit status {proc.returncode}, expected {expect}\n{proc.stdout}"
    return out


@pytest.fixture(scope="module")
def one_process_reference(tmp_path_factory):
    return torch.load(_train(tmp_path_factory.mktemp("ref1"), "run", ONE_PROCESS))


@pytest.fixture(scope="module")
def two_process_reference(tmp_path_factory):
    return torch.load(_train(tmp_path_factory.mktemp("ref2"), "run", TWO_PROCESSES))


@pytest.mark.parametrize("workers", [0, 2])
def test_one_process_killed_mid_epoch_resumes_bit_exact(tmp_path, one_process_reference, workers):
    config = {**ONE_PROCESS, "KILL_AT": 17, "NUM_WORKERS": workers}  # epoch 1, 3 steps after the step-14 save
    _train(tmp_path, "run", config, expect=-9)
    resumed = torch.load(_train(tmp_path, "run", config))
    assert resumed["resumed_from"] == 14
    assert_same_weights(one_process_reference, resumed)


def test_ddp_killed_mid_epoch_resumes_bit_exact(tmp_path, two_process_reference):
    config = {**TWO_PROCESSES, "KILL_AT": 11}  # epoch 1, 4 steps after the step-7 save
    _train(tmp_path, "run", config, expect=-9)
    resumed = torch.load(_train(tmp_path, "run", config))
    assert resumed["resumed_from"] == 7
    assert_same_weights(two_process_reference, resumed)
    # What DDP ranks saved is a plain torch.save file: torch.load's defaults read it, every rank's RNG included.
    for path in sorted((tmp_path / "run").glob("*.ckpt")):
        checkpoint = torch.load(path)
        assert {"model", "optimizer", "step"} <= set(checkpoint) and set(checkpoint["__fabric_kit__"]["rng"]) == {0, 1}


def test_elastic_restart_after_worker_sigkill_completes_bit_exact(tmp_path, two_process_reference):
    if importlib.util.find_spec("fabric_kit.cli") is not None:
        launcher = ["-m", "fabric_kit", "run", "--accelerator", "cpu", "--devices", "2", "--max-restarts", "1",
                    "--main-port", str(free_port())]
    else:
        launcher = ["-m", "torch.distributed.run", "--nproc-per-node", "2", "--max-restarts", "1",
                    "--master-port", str(free_port())]
    marker = tmp_path / "killed-once"
    config = {**TWO_PROCESSES, "KILL_AT": 11, "KILL_RANK": 1, "MARKER": marker}
    resumed = torch.load(_train(tmp_path, "run", config, *launcher))
    assert marker.exists(), "rank 1 never killed itself"
    assert resumed["resumed_from"] == 7
    assert_same_weights(two_process_reference, resumed)


def test_saved_on_two_processes_resumed_on_one_sees_each_sample_of_the_epoch_once(tmp_path):
    # 48 samples, global batch 8: 6 steps an epoch. Saved at step 4 (32 samples in), killed at 5, resumed on one
    # process with batch 8, which must see exactly the 16 samples the two ranks had not reached.
    log = tmp_path / "seen"
    config = dict(N=48, TOTAL=12, SAVE_EVERY=4, KILL_AT=5, SEEN_LOG=log)
    _train(tmp_path, "run", {**config, "STRATEGY": "ddp", "DEVICES": 2, "BATCH": 4}, expect=-9)
    resumed = torch.load(_train(tmp_path, "run", {**config, "BATCH": 8}))
    assert resumed["resumed_from"] == 4

    def seen(path, last_step=None):
        for line in path.read_text().splitlines():
            epoch, step, *indices = map(int, line.split())
            if epoch == 0 and (last_step is None or step <= last_step):
                yield from indices

    before = [i for rank in (0, 1) for i in seen(tmp_path / f"seen.2.{rank}", last_step=4)]
    after = list(seen(tmp_path / "seen.1.0"))
    assert len(before) == 32 and len(after) == 16
    assert Counter(before + after) == Counter(range(48))
