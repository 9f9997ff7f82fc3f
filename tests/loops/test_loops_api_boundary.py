"""loops must be built on fabric_kit's public API only: no torch.distributed, no fabric_kit private modules."""
import ast
from pathlib import Path

import fabric_kit
import fabric_kit.checkpoint
import loops

LOOPS = Path(loops.__file__).parent
PUBLIC = {"fabric_kit": set(fabric_kit.__all__), "fabric_kit.checkpoint": set(fabric_kit.checkpoint.__all__)}


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
            if module in PUBLIC:
                if names is None or not set(names) <= PUBLIC[module]:
                    offences.append(f"{where}: imports {names} from {module} (public: {sorted(PUBLIC[module])})")
            elif module.startswith("fabric_kit.") or module.startswith("lightning"):
                offences.append(f"{where}: imports {module}")
    assert not offences, "\n".join(offences)


def test_top_level_exports():
    assert {"Trainer", "LightningModule", "LightningDataModule", "Callback", "seed_everything"} <= set(loops.__all__)
    assert loops.seed_everything is fabric_kit.seed_everything
