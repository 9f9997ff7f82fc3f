"""Sharded (DCP) checkpoints are read without running code stored in them: `fabric.load` under FSDP and
`fabric consolidate` refuse a crafted `.metadata` or shard entry with default arguments, load intact ones, and
`fabric consolidate` reports a damaged directory in one line.

The FSDP cases run in 2 real processes (sharded_reading_worker.py, once for the module); consolidation runs as the
real command. Each crafted file is also shown to be live: the full unpickler does run its code.
"""
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from hypothesis import given, settings
from hypothesis import strategies as st

from fabric_kit.checkpoint import CheckpointCorruptedError, UnsafeCheckpointError, save_file
from fabric_kit.checkpoint.consolidate import consolidate
from fabric_kit.checkpoint.directory import MANIFEST, write_manifest
from fabric_kit.checkpoint.sharded import PLAIN_ENTRIES
from fabric_kit.checkpoint.sharded_reading import load_sharded, read_metadata
from fabric_kit.cli.main import main
from tests.helpers.crafted import TouchesMarker, copy_of, crafted_metadata

WORKER = Path(__file__).with_name("sharded_reading_worker.py")
# DCP warns that a save or load without a process group is meant for one process: here it is.
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


@pytest.fixture(scope="module")
def sharded(run_ranks, tmp_path_factory):
    """What both ranks observed, and the directory with the intact and crafted checkpoints."""
    out = tmp_path_factory.mktemp("sharded")
    return run_ranks([WORKER, out], out, timeout=300)[1], out


def _consolidate_command(*args):
    return subprocess.run([sys.executable, "-m", "fabric_kit", "consolidate", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def _assert_one_line_error(stderr, *words):
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fabric consolidate: error: "), stderr
    assert "Traceback" not in stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize(("name", "refused_file", "words"), [
    ("crafted_metadata", ".metadata", ["refused the checkpoint's metadata", "pathlib.Path.touch"]),
    ("crafted_entry", "__1_0.distcp", ["refused its entry 'optimizer.param_groups.0.lr'"]),
])
def test_crafted_checkpoint_is_refused_and_runs_nothing(sharded, tmp_path, name, refused_file, words):
    ranks, out = sharded
    marker = out / f"marker_{name}"
    for rank in ranks:  # fabric.load(dir, state) under FSDP, default arguments
        assert rank[name]["error"] == "UnsafeCheckpointError", rank[name]
        assert Path(rank[name]["path"]).name == refused_file
        assert "weights_only=False" in rank[name]["message"]
        for word in words:
            assert word in rank[name]["message"]
    assert not marker.exists()

    done = _consolidate_command(out / name, "--output", tmp_path / "model.pt")
    assert done.returncode == 1
    _assert_one_line_error(done.stderr, refused_file, "--no-weights-only", *words)
    assert not marker.exists() and not (tmp_path / "model.pt").exists()

    # The crafted file is live: reading it with the full unpickler (the explicit opt-in) runs its code.
    done = _consolidate_command(out / name, "--output", tmp_path / "model.pt", "--no-weights-only")
    assert marker.exists(), done.stderr


def test_intact_checkpoint_loads_with_defaults_and_with_the_full_unpickler(sharded):
    ranks, _ = sharded
    for rank in ranks:
        for case in ("intact", "intact_full_unpickler"):
            loaded = rank[case]
            assert "error" not in loaded, loaded
            assert loaded["step"] == 2 and loaded["lr"] == 1e-2
            for key, tensor in rank["saved"].items():
                assert torch.equal(loaded["weights"][key], tensor), (case, key)


def test_consolidate_intact(sharded, tmp_path):
    ranks, out = sharded
    done = _consolidate_command(out / "intact", "--output", tmp_path / "model.pt")
    assert done.returncode == 0, done.stderr
    checkpoint = torch.load(tmp_path / "model.pt")  # plain torch.load, safe mode
    for key, tensor in ranks[0]["saved"].items():
        assert torch.equal(checkpoint["model"][key], tensor), key
    assert checkpoint["step"] == 2 and checkpoint["optimizer"]["param_groups"][0]["params"] == list(range(27))


def _flip_byte(file):
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))


def _garble(file):
    file.write_bytes(file.read_bytes()[:-40])
    write_manifest(file.parent)  # damage the manifest cannot see: the writer updated it


DAMAGE = {
    "missing shard": (lambda d: (d / "__1_0.distcp").unlink(), "__1_0.distcp", "missing"),
    "flipped byte in a shard": (lambda d: _flip_byte(d / "__0_0.distcp"), "__0_0.distcp", "damaged"),
    "flipped byte in .metadata": (lambda d: _flip_byte(d / ".metadata"), ".metadata", "damaged"),
    "flipped byte in the plain entries": (lambda d: _flip_byte(d / PLAIN_ENTRIES), PLAIN_ENTRIES, "damaged"),
    "missing manifest": (lambda d: (d / MANIFEST).unlink(), MANIFEST, "manifest is missing"),
    "missing .metadata": (lambda d: (d / ".metadata").unlink(), ".metadata", "missing"),
    "truncated .metadata, manifest updated": (lambda d: _garble(d / ".metadata"), ".metadata", "damaged"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_consolidate_reports_a_damaged_directory_in_one_line(sharded, tmp_path, capsys, case):
    _, out = sharded
    damage, file, word = DAMAGE[case]
    directory = copy_of(out / "intact", tmp_path / "checkpoint")
    damage(directory)
    assert main(["consolidate", str(directory), "--output", str(tmp_path / "model.pt")]) == 1
    _assert_one_line_error(capsys.readouterr().err, file, word)
    assert not (tmp_path / "model.pt").exists()


def test_consolidate_names_what_is_no_sharded_checkpoint(tmp_path, capsys):
    (tmp_path / MANIFEST).write_text('{"format": "fabric_kit-directory/1", "files": {}}')
    with pytest.raises(SystemExit) as exit_status:
        main(["consolidate", str(tmp_path), "--output", str(tmp_path / "model.pt")])
    assert exit_status.value.code == 2
    assert "holds no .metadata file" in capsys.readouterr().err


# -- in this process: DCP's own single-process save -----------------------------------------------------------
def _save(state, directory):
    dcp.save(state, checkpoint_id=directory, no_dist=True)
    save_file({"step": 7}, Path(directory) / PLAIN_ENTRIES)
    write_manifest(directory)


def test_refused_metadata_names_the_file_and_the_opt_in(tmp_path):
    _save({"model": {"weight": torch.ones(3)}}, tmp_path / "intact")
    crafted = crafted_metadata(tmp_path / "intact", tmp_path / "crafted", tmp_path / "marker")
    with pytest.raises(UnsafeCheckpointError, match="weights_only=False") as info:
        read_metadata(crafted)
    assert info.value.path == str(crafted / ".metadata")
    with pytest.raises(UnsafeCheckpointError):
        load_sharded({"model": {"weight": torch.zeros(3)}}, crafted, no_dist=True)
    assert not (tmp_path / "marker").exists()
    read_metadata(crafted, weights_only=False)
    assert (tmp_path / "marker").exists()


def test_metadata_that_is_not_dcp_metadata_is_damaged(tmp_path):
    (tmp_path / ".metadata").write_bytes(pickle.dumps({"not": "metadata"}))
    with pytest.raises(CheckpointCorruptedError, match="not torch.distributed.checkpoint's Metadata"):
        read_metadata(tmp_path)
    (tmp_path / ".metadata").write_bytes(pickle.dumps(TouchesMarker(tmp_path / "marker"), protocol=2)[:-1])
    with pytest.raises(UnsafeCheckpointError):  # refused before the torn end is reached
        read_metadata(tmp_path)
    assert not (tmp_path / "marker").exists()


_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64, torch.int32, torch.int8,
           torch.uint8, torch.bool, torch.complex64]
_NAMES = st.text("abcxyz_", min_size=1, max_size=4)
_TENSORS = st.builds(lambda dtype, shape, seed: (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 9
                                                 ).to(dtype),
                     st.sampled_from(_DTYPES), st.lists(st.integers(1, 4), max_size=3), st.integers(0, 2**16))
_PLAIN = st.one_of(st.integers(-2**40, 2**40), st.floats(allow_nan=False), st.booleans(), st.none(),
                   st.text(max_size=5), st.lists(st.integers(0, 9), max_size=3))
_ENTRIES = st.recursive(st.one_of(_TENSORS, _PLAIN),
                        lambda children: st.dictionaries(_NAMES, children, min_size=1, max_size=3), max_leaves=8)


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


@settings(max_examples=25, deadline=None)
@given(st.dictionaries(_NAMES, _ENTRIES, min_size=1, max_size=3))
def test_consolidate_gives_back_what_dcp_saved(state):
    """Whatever tensors (of any dtype and shape) and plain values a state holds, the restricted readers accept
    the metadata and entries DCP wrote for it, and consolidation rebuilds the nested state exactly."""
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch) / "checkpoint"
        _save(state, directory)
        consolidate(directory, Path(scratch) / "model.pt")
        consolidated = torch.load(Path(scratch) / "model.pt")
    assert consolidated.pop("step") == 7
    assert _same(state, consolidated)
