"""A `torch.compile`d LightningModule under the Trainer, on one process and under DDP and FSDP on two: fit runs
the module's steps through the compiled router (the settings of the user's compile, applied again around fabric's
wrapper, outside DDP / FSDP), logs, and checkpoints the plain keys (no `_orig_mod.`), training to the uncompiled
run's weights. The aot_eager backend traces the steps as inductor
does without its C++ build (about three minutes on 2 cores), which adds nothing the routing depends on."""
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import loops as L


class Net(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(2, 1)
        self.traced = False  # forward ran under torch.compile's tracing

    def forward(self, x):
        self.traced = self.traced or torch.compiler.is_compiling()
        return self.layer(x)

    def training_step(self, batch, batch_idx):
        loss = self(batch).pow(2).mean()
        self.log("loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val", self(batch).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(model, tmp_path):
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, max_epochs=2, default_root_dir=tmp_path, limit_val_batches=2)
    data = torch.randn(8, 2, generator=torch.Generator().manual_seed(1))
    trainer.fit(model, DataLoader(data, batch_size=2), DataLoader(data[:4], batch_size=2))
    return trainer


def test_compiled_module_fits_logs_and_checkpoints(tmp_path):
    plain = Net()
    fit(plain, tmp_path / "plain")
    assert not plain.traced
    model = Net()
    trainer = fit(torch.compile(model, backend="aot_eager"), tmp_path / "compiled")
    assert model.traced  # the steps ran compiled
    assert trainer.lightning_module is model and trainer.global_step == 8
    assert sorted(trainer.callback_metrics) == ["loss", "val"]
    assert torch.allclose(model.layer.weight, plain.layer.weight, atol=1e-5)
    checkpoint = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)
    assert sorted(checkpoint["state_dict"]) == ["layer.bias", "layer.weight"]  # no "_orig_mod."
    assert torch.equal(Net.load_from_checkpoint(trainer.checkpoint_callback.best_model_path).layer.weight,
                       model.layer.weight)



def test_compiled_module_under_ddp_and_fsdp_on_two_processes(run_ranks, tmp_path):
    """One launch: DDP then FSDP, each uncompiled and compiled (tests/loops/trainer/scripts/loops_compile_fit.py)."""
    script = Path(__file__).parent / "scripts" / "loops_compile_fit.py"
    _, ranks = run_ranks([script, tmp_path], tmp_path, timeout=600)
    for strategy in ("ddp", "fsdp"):
        for rank in ranks:
            plain, compiled = rank[strategy, False], rank[strategy, True]
            assert compiled["outer"] == "OptimizedModule" and compiled["around"]  # compiled outside the wrapper
            assert plain["outer"] != "OptimizedModule" and not plain["traced"]
            assert compiled["traced"] and compiled["module"] and compiled["global_step"] == plain["global_step"] == 8
            assert compiled["metrics"] == plain["metrics"] == ["loss", "val"]
            for name, tensor in plain["weights"].items():
                assert torch.allclose(compiled["weights"][name], tensor, atol=1e-5), (strategy, name)
        files = {kind: torch.load(tmp_path / f"{strategy}-{kind}.ckpt", weights_only=True)["state_dict"]
                 for kind in ("plain", "compiled")}
        keys = ["net.0.bias", "net.0.weight", "net.2.bias", "net.2.weight"]
        assert sorted(files["compiled"]) == sorted(files["plain"]) == keys  # no "_orig_mod." prefix
        for name in keys:
            assert torch.allclose(files["compiled"][name], ranks[0][strategy, False]["weights"][name], atol=1e-5)
