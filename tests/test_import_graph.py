"""No import circle between modules of fabric_kit or loops: a static check of the module-level imports (those under
`if TYPE_CHECKING:` excluded, imports inside functions are lazy by design), so a circle fails here even when the
current import order happens to hide it."""
import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def module_names(package: Path) -> dict[str, Path]:
    names = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imported(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of `modules` that `module` imports when it is imported."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                if target in modules:
                    found.add(target)
    return found - {module}


def circle(package: Path) -> list[str] | None:
    """One import circle among the modules of `package` (its first module repeated at the end), or None."""
    modules = module_names(package)
    graph = {name: imported(name, path, modules) for name, path in modules.items()}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        return error.args[1]
    return None


@pytest.mark.parametrize("package", ["fabric_kit", "loops"])
def test_no_import_circle(package):
    assert circle(ROOT / package) is None


def test_a_circle_is_found(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import g\n")
    (package / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import c\n"
                                  "from . import a\n")
    (package / "c.py").write_text("import pkg.b\n")
    found = circle(package)
    assert found is not None and found[0] == found[-1] and sorted(found[:-1]) == ["pkg.a", "pkg.b"]
