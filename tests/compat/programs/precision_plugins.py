# The precision plugin a Fabric chooses for each setting, and the plugins a program builds itself, printed.
import torch
from lightning.fabric import Fabric
from lightning.fabric.plugins import DoublePrecision, HalfPrecision, MixedPrecision, Precision

# 16-mixed is left out on purpose: on the CPU the two differ by design (see the README's "What differs").
for precision in ("32-true", "64-true", "16-true", "bf16-true", "bf16-mixed", 32, 64, "bf16"):
    for devices, strategy in ((1, "auto"), (2, "ddp")):
        chosen = Fabric(accelerator="cpu", devices=devices, strategy=strategy, precision=precision).strategy.precision
        print(f"@@ {precision} {strategy}: {type(chosen).__name__} {chosen.precision}")

for plugin in (Precision(), DoublePrecision(), HalfPrecision(), HalfPrecision("bf16-true"),
               MixedPrecision("bf16-mixed", "cpu"), MixedPrecision("16-mixed", "cpu")):
    fabric = Fabric(accelerator="cpu", devices=1, plugins=plugin)
    model = fabric.setup(torch.nn.Linear(2, 2))
    output = model(torch.ones(1, 2))
    scaler = type(getattr(plugin, "scaler", None)).__name__
    print(f"@@ {type(plugin).__name__}({plugin.precision}): used {fabric.strategy.precision is plugin}, "
          f"weight {model.weight.dtype}, output {output.dtype}, scaler {scaler}")

for arguments in ({"precision": "bf16-mixed", "plugins": Precision()},
                  {"plugins": [DoublePrecision(), HalfPrecision()]}):
    try:
        Fabric(accelerator="cpu", devices=1, **arguments)
        print("@@ accepted", sorted(arguments))
    except ValueError:
        print("@@ ValueError", sorted(arguments))
