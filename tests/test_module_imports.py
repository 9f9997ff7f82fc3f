"""Every module of fabric_kit and loops imports on its own, first of its packages: an import cycle between two
modules only shows when a program (or a test's subprocess) happens to import one of them first."""
from __future__ import annotations

import importlib
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

OPTIONAL = {"torch_xla", "bitsandbytes", "torchao", "tensorboard", "jsonargparse", "rich", "omegaconf"}


def import_failures(packages: list[str]) -> tuple[int, list[str]]:
    """Import each module of `packages` with none of its package's modules loaded before it (a cycle stays inside
    one package: fabric_kit never imports loops, so loops' modules are imported over a loaded fabric_kit)."""
    names = [m.name for p in packages for m in pkgutil.walk_packages(importlib.import_module(p).__path__, p + ".")]
    failures = []
    for name in names:
        for loaded in [n for n in sys.modules if n.split(".")[0] == name.split(".")[0]]:
            del sys.modules[loaded]
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as error:
            if (error.name or "").split(".")[0] not in OPTIONAL:
                failures.append(f"{name}: {error!r}")
        except Exception as error:
            failures.append(f"{name}: {error!r}")
    return len(names), failures


def run_fresh(packages: list[str], path: str | None = None) -> tuple[int, list[str]]:
    """`import_failures` in a fresh interpreter; `-P` keeps this folder (it holds a `loops` of tests) off its path."""
    env = dict(os.environ)
    if path:
        env["PYTHONPATH"] = os.pathsep.join([path, env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-P", __file__, *packages], capture_output=True, text=True, timeout=600,
                            env=env)
    assert result.returncode == 0, result.stderr
    count, failures = json.loads(result.stdout.strip().splitlines()[-1])
    return count, failures


def test_every_module_imports_first() -> None:
    count, failures = run_fresh(["fabric_kit", "loops"])
    assert count > 100  # the walk found the packages' modules
    assert not failures, "\n".join(failures)


def test_a_cycle_is_reported(tmp_path: Path) -> None:
    """The check can fail: two modules that import each other at the top are both reported."""
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from cyclic.b import B\nclass A: ...\n")
    (package / "b.py").write_text("from cyclic.a import A\nclass B: ...\n")
    count, failures = run_fresh(["cyclic"], path=str(tmp_path))
    assert count == 2 and [f.split(":")[0] for f in failures] == ["cyclic.a", "cyclic.b"]


if __name__ == "__main__":
    print(json.dumps(import_failures(sys.argv[1:])))
