"""A process SIGKILLed at random instants inside `fabric.save` (or a directory save) always leaves a loadable
checkpoint: the old one or the new one, never a mix."""
import multiprocessing
import os
import random
import signal
import time

import torch

from fabric_kit import Fabric
from fabric_kit.checkpoint import atomic_directory, load_file, verify_directory

KILLS = 20


def _save_forever(path, version):
    fabric = Fabric(accelerator="cpu", devices=1)
    model = torch.nn.Linear(128, 128)
    while True:
        with torch.no_grad():
            model.weight.fill_(version)
        fabric.save(path, {"model": model, "version": version})
        version += 1


def _save_directory_forever(path, version):
    while True:
        with atomic_directory(path) as staging:
            for shard in range(3):
                torch.save(torch.full((64, 128), float(version)), staging / f"shard-{shard}.pt")
        version += 1


def _kill_repeatedly(target, path, check):
    """Start `target(path, first_version)` in a forked child KILLS times and SIGKILL it after a random delay; after
    each kill, `check(path)` returns the version left, which must never go back. Returns the versions seen and
    how many kills landed inside a write (a temporary file or staging directory was left)."""
    context = multiprocessing.get_context("fork")
    rng = random.Random(0)
    versions, torn = [0], 0
    for kill in range(1, KILLS + 1):
        child = context.Process(target=target, args=(path, kill * 10**6))
        child.start()
        time.sleep(rng.uniform(0.0, 0.4))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        torn += any(p.name.startswith(".") for p in path.parent.iterdir())
        version = check(path)
        assert version >= versions[-1], f"the checkpoint went back from version {versions[-1]} to {version}"
        versions.append(version)
    return set(versions), torn


def test_fabric_save_killed_at_random_instants_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "state.ckpt"
    Fabric(accelerator="cpu", devices=1).save(path, {"model": torch.nn.Linear(128, 128), "version": 0})

    def check(path):
        checkpoint = load_file(path)
        version = checkpoint["version"]
        assert version == 0 or torch.all(checkpoint["model"]["weight"] == version)
        return version

    versions, torn = _kill_repeatedly(_save_forever, path, check)
    assert len(versions) > 5 and torn > 0, f"kills landed too rarely after ({versions}) or inside ({torn}) a save"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "state.ckpt"]
    assert len(leftovers) <= 1, f"temporary files pile up: {leftovers}"


def test_directory_save_killed_at_random_instants_leaves_a_complete_checkpoint(tmp_path):
    path = tmp_path / "sharded"

    def check(path):
        if not path.exists():  # killed before the first save completed
            return 0
        verify_directory(path)
        values = {torch.load(path / f"shard-{shard}.pt")[0, 0].item() for shard in range(3)}
        assert len(values) == 1, f"shards of different saves mixed: {values}"
        return values.pop()

    versions, torn = _kill_repeatedly(_save_directory_forever, path, check)
    assert len(versions) > 5 and torn > 0, f"kills landed too rarely after ({versions}) or inside ({torn}) a save"
