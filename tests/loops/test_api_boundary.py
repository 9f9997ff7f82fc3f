"""loops must be built on fabric_kit's public API only: no torch.distributed, and from fabric_kit only the names a
module declares public in its `__all__` (fabric_kit itself, fabric_kit.checkpoint, ...)."""
import ast
import importlib
from pathlib import Path

import fabric_kit
import loops

LOOPS = Path(loops.__file__).parent


def _public_names(module):
    """The names `module` (a fabric_kit module) declares in `__all__`; empty when it declares none."""
    return set(getattr(importlib.import_module(module), "__all__", ()))


def _imports(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            yield node.lineno, node.module or "", [alias.name for alias in node.names]


def test_loops_imports_only_public_fabric_kit_and_no_torch_distributed():
    files = sorted(LOOPS.rglob("*.py"))
    assert files
    offences = []
    for path in files:
        text = path.read_text()
        if "torch.distributed" in text or "import distributed" in text:
            offences.append(f"{path}: mentions torch.distributed")
        for line, module, names in _imports(path):
            where = f"{path.relative_to(LOOPS.parent)}:{line}"
            if module.startswith("torch.distributed"):
                offences.append(f"{where}: imports {module}")
            if module == "fabric_kit" or module.startswith("fabric_kit."):
                public = _public_names(module)
                if names is None or not set(names) <= public:
                    offences.append(f"{where}: imports {names} from {module}, whose __all__ is {sorted(public)}")
            elif module.startswith("lightning"):
                offences.append(f"{where}: imports {module}")
    assert not offences, "\n".join(offences)


def test_top_level_exports():
    assert {"Trainer", "LightningModule", "LightningDataModule", "Callback", "seed_everything"} <= set(loops.__all__)
    assert loops.seed_everything is fabric_kit.seed_everything
