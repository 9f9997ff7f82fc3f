"""`import fabric_kit` and a one-process Fabric on a torch built without torch.distributed (as some macOS and
Windows wheels were). No such torch is installed here, so a subprocess simulates one: after `import torch` it
replaces `torch.distributed` with a module whose `is_available()` returns False (and the `ProcessGroup` placeholder
torch defines there for its own modules), and makes every `torch.distributed.*` submodule fail to import, which is
what such a build offers."""
import subprocess
import sys

from tests.helpers.processes import process_environment

SIMULATED = '''
import importlib.abc, sys, types
import torch
stub = types.ModuleType("torch.distributed")
stub.is_available = lambda: False
stub.ProcessGroup = type("_ProcessGroupStub", (), {})  # the one name torch's own fallback defines
for name in [n for n in sys.modules if n == "torch.distributed" or n.startswith("torch.distributed.")]:
    del sys.modules[name]
sys.modules["torch.distributed"] = torch.distributed = stub

class NoDistributed(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.startswith("torch.distributed."):
            raise ImportError(f"No module named {name!r}")

sys.meta_path.insert(0, NoDistributed())
from fabric_kit import Fabric
from fabric_kit.environments import detect_environment
fabric = Fabric(accelerator="cpu", devices=1)
model = torch.nn.Linear(2, 1)
model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
fabric.backward(model(torch.ones(1, 2)).sum())
optimizer.step()
print(type(detect_environment()).__name__, fabric.world_size, fabric.all_reduce(torch.tensor(3.0)).item())
'''


def test_single_process_fabric_without_torch_distributed():
    done = subprocess.run([sys.executable, "-c", SIMULATED], capture_output=True, text=True, timeout=120,
                          env=process_environment(TORCHELASTIC_RUN_ID="x"))
    assert done.returncode == 0, done.stderr
    # torchrun's mark alone does not make a torchrun environment where torch.distributed is absent.
    assert done.stdout.split() == ["LocalEnvironment", "1", "3.0"]
