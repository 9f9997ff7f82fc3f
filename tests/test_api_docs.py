"""docs/api.md lists every public constructor argument, method and property of Fabric, the loops Trainer and
SpikeDetection, each with a meaning, and nothing that no longer exists."""
import importlib
import inspect
import re
from pathlib import Path

import pytest

import loops
from fabric_kit import Fabric
from fabric_kit.spike import SpikeDetection

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
ENTRY = re.compile(r"^\| `([A-Za-z_]\w*)[^|]*` \| (.*) \|$")


def documented(section):
    """{name: meaning} of the table rows under `## <section>`, up to the next `## ` heading."""
    text = DOC.read_text().split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return {m.group(1): m.group(2).strip() for m in map(ENTRY.match, text.splitlines()) if m}


def public_names(cls, instance):
    """Constructor parameters, public class members and public attributes a fresh instance sets."""
    names = set(inspect.signature(cls.__init__).parameters) - {"self"}
    names |= {name for name, _ in inspect.getmembers(cls) if not name.startswith("_")}
    names |= {name for name in vars(instance) if not name.startswith("_")}
    return names


@pytest.fixture(scope="module")
def instances():
    return {"Fabric": (Fabric, Fabric(accelerator="cpu", devices=1)),
            "Trainer": (loops.Trainer, loops.Trainer(accelerator="cpu", devices=1, logger=False,
                                                     enable_progress_bar=False)),
            "SpikeDetection": (SpikeDetection, SpikeDetection())}


@pytest.mark.parametrize("section", ["Fabric", "Trainer", "SpikeDetection"])
def test_every_public_name_is_documented(section, instances):
    cls, instance = instances[section]
    missing = sorted(public_names(cls, instance) - set(documented(section)))
    assert not missing, f"docs/api.md ({section}) does not document: {missing}"


@pytest.mark.parametrize("section", ["Fabric", "Trainer", "SpikeDetection"])
def test_every_documented_name_exists_and_has_a_meaning(section, instances):
    cls, instance = instances[section]
    entries = documented(section)
    stale = sorted(set(entries) - public_names(cls, instance))
    assert not stale, f"docs/api.md ({section}) documents names the code no longer has: {stale}"
    assert all(entries.values()), f"entries without a meaning: {[n for n, m in entries.items() if not m]}"


def import_paths():
    """{module: names} of the rows under `## Import paths`: every backticked name in the names column."""
    text = DOC.read_text().split("\n## Import paths\n", 1)[1].split("\n## ", 1)[0]
    rows = (re.match(r"^\| `([\w.]+)` \| (.*) \|$", line) for line in text.splitlines())
    return {m.group(1): set(re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", m.group(2)))) for m in rows if m}


def test_every_import_path_module_lists_what_it_exports():
    paths = import_paths()
    assert len(paths) >= 20
    for module, names in paths.items():
        exported = set(importlib.import_module(module).__all__)
        assert names == exported, f"docs/api.md ({module}): missing {sorted(exported - names)}, " \
                                  f"stale {sorted(names - exported)}"
