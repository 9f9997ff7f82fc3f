"""LightningCLI end to end: scripts/cli_regression.py runs in a subprocess as a user's script would (YAML files,
overrides, --print_config, class_path, --optimizer, --ckpt_path, 2 DDP processes); bad input is checked
in-process too (exit status 2 and a message naming the key)."""
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import fabric_kit.accelerators
import fabric_kit.strategies
import loops
import loops.loggers
from loops.cli import LightningCLI, OptimizerCallable, instantiate_class
from tests.loops.cli.scripts import cli_regression as script  # its classes, for the in-process tests

SCRIPT = Path(__file__).parent / "scripts" / "cli_regression.py"


def write_yaml(path, config):
    path.write_text(yaml.safe_dump(config))
    return path


def base_config(root):
    return {"seed_everything": 7, "trainer": {"max_epochs": 1, "default_root_dir": str(root)},
            "model": {"class_path": "Net", "init_args": {"hidden": 4}}, "data": {"batch_size": 4}}


def read_summary(out_dir, stage, rank=0):
    return json.loads((Path(out_dir) / f"{stage}_rank{rank}.json").read_text())


@pytest.fixture(scope="session")
def cli(run_ranks):
    """`cli(*args)`: run the script with these arguments; fails the test unless it exits 0."""

    def run(*args, expect=0):
        proc = run_ranks([SCRIPT, *args], check=False, timeout=180)
        assert proc.returncode == expect, f"exit status {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    return run


FIT_OVERRIDES = ["--trainer.max_epochs", "2", "--model.lr", "0.05", "--then_test_best", "true"]


@pytest.fixture(scope="module")
def fitted(cli, tmp_path_factory):
    """One fit from a YAML plus overrides, shared by the tests that read what it wrote."""
    tmp = tmp_path_factory.mktemp("cli_fit")
    config = write_yaml(tmp / "base.yaml", base_config(tmp / "root"))
    args = ["fit", "--config", config, *FIT_OVERRIDES, "--summary.out_dir", tmp / "out"]
    cli(*args)
    summary = read_summary(tmp / "out", "fit")
    return {"tmp": tmp, "args": args, "summary": summary, "log_dir": Path(summary["log_dir"])}


def test_fit_from_yaml_with_overrides_saves_the_resolved_config(fitted):
    summary = fitted["summary"]
    assert summary["model"] == "Net" and summary["hparams"] == {"hidden": 4, "lr": 0.05}
    assert summary["global_step"] == 16  # 32 samples / batch 4 * 2 epochs (the override, not the YAML's 1)
    assert summary["optimizer"] == "SGD" and summary["lr"] == 0.05 and summary["seed"] == 7
    log_dir = fitted["log_dir"]
    assert log_dir == fitted["tmp"] / "root" / "lightning_logs" / "version_0"
    saved = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert saved["trainer"]["max_epochs"] == 2 and saved["model"]["init_args"] == {"hidden": 4, "lr": 0.05}
    assert saved["seed_everything"] == 7 and saved["data"] == {"n": 32, "batch_size": 4}
    assert sorted(p.name for p in log_dir.glob("saved_by_rank*")) == ["saved_by_rank0"]


def test_after_fit_tests_the_best_checkpoint(fitted):
    tested = read_summary(fitted["tmp"] / "out", "test")
    assert fitted["summary"]["best"].endswith("epoch=1-step=16.ckpt")
    assert tested["weights"] == fitted["summary"]["weights"] and "test_loss" in tested["metrics"]


def test_print_config_round_trips(cli, fitted, tmp_path):
    printed = cli(*fitted["args"], "--print_config").stdout
    assert not (fitted["tmp"] / "root" / "lightning_logs" / "version_1").exists()  # printing runs nothing
    assert yaml.safe_load(printed) == yaml.safe_load((fitted["log_dir"] / "config.yaml").read_text())
    config = tmp_path / "printed.yaml"
    config.write_text(printed)
    cli("fit", "--config", config, "--summary.out_dir", tmp_path, "--then_test_best", "false")
    again = read_summary(tmp_path, "fit")
    assert again["weights"] == fitted["summary"]["weights"] and again["metrics"] == fitted["summary"]["metrics"]


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_evaluate_a_checkpoint_in_a_new_process(cli, fitted, tmp_path, stage):
    best = fitted["summary"]["best"]
    # another seed: the model starts from other weights, so equal weights mean the checkpoint was loaded
    cli(stage, "--config", fitted["log_dir"] / "config.yaml", "--seed_everything", "123", "--ckpt_path", best,
        "--summary.out_dir", tmp_path)
    evaluated = read_summary(tmp_path, stage)
    assert evaluated["seed"] == 123 and evaluated["weights"] == fitted["summary"]["weights"]
    if stage == "validate":  # fit validated these weights after its last epoch
        assert evaluated["metrics"]["val_loss"] == pytest.approx(fitted["summary"]["metrics"]["val_loss"])
    else:
        tested_after_fit = read_summary(fitted["tmp"] / "out", "test")
        assert evaluated["metrics"]["test_loss"] == pytest.approx(tested_after_fit["metrics"]["test_loss"])


def test_best_from_an_earlier_fit_in_a_new_process(cli, fitted, tmp_path):
    """With the fit's checkpoint folder named in the config, `test --ckpt_path best` finds the best file there."""
    callback = {"class_path": "loops.callbacks.ModelCheckpoint",
                "init_args": {"dirpath": str(fitted["log_dir"] / "checkpoints")}}
    overlay = write_yaml(tmp_path / "checkpoints.yaml", {"trainer": {"callbacks": [callback]}})
    cli("test", "--config", fitted["log_dir"] / "config.yaml", "--config", overlay, "--seed_everything", "123",
        "--ckpt_path", "best", "--summary.out_dir", tmp_path)
    assert read_summary(tmp_path, "test")["weights"] == fitted["summary"]["weights"]


def test_fit_resumes_from_ckpt_path(cli, fitted, tmp_path):
    cli("fit", "--config", fitted["log_dir"] / "config.yaml", "--trainer.max_epochs", "3", "--then_test_best",
        "false", "--ckpt_path", fitted["summary"]["best"], "--summary.out_dir", tmp_path)
    assert read_summary(tmp_path, "fit")["global_step"] == 24


def test_subclass_optimizer_and_scheduler_from_the_command_line(cli, tmp_path):
    base = write_yaml(tmp_path / "base.yaml", base_config(tmp_path / "root"))
    # a second file wins over the first: two epochs, and a checkpoint callback chosen by class_path
    later = write_yaml(tmp_path / "later.yaml", {"trainer": {"max_epochs": 2, "callbacks": [
        {"class_path": "loops.callbacks.ModelCheckpoint", "init_args": {"monitor": "val_loss", "save_top_k": 2}}],
        "logger": {"class_path": "loops.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path / "csv")}}}})
    proc = cli("fit", "--config", base, "--config", later, "--model", "ScaledNet", "--model.scale", "3",
               "--optimizer", "Adam", "--optimizer.lr", "0.02", "--lr_scheduler", "StepLR",
               "--lr_scheduler.step_size", "1", "--lr_scheduler.gamma", "0.5", "--summary.out_dir", tmp_path)
    summary = read_summary(tmp_path, "fit")
    assert summary["model"] == "ScaledNet" and summary["hparams"] == {"scale": 3.0, "hidden": 4, "lr": 0.1}
    assert summary["optimizer"] == "Adam" and summary["lr"] == pytest.approx(0.02 * 0.5 ** 2)  # stepped each epoch
    assert summary["global_step"] == 16
    log_dir = Path(summary["log_dir"])
    assert log_dir == tmp_path / "csv" / "lightning_logs" / "version_0"  # the logger's folder holds the config
    assert (log_dir / "config.yaml").is_file() and (log_dir / "metrics.csv").is_file()
    assert len(list((log_dir / "checkpoints").glob("*.ckpt"))) == 2  # save_top_k=2 from the second file
    assert "ScaledNet.configure_optimizers is replaced" in proc.stderr


def test_ddp_two_processes_parse_the_same_command_line(cli, tmp_path):
    config = write_yaml(tmp_path / "base.yaml", base_config(tmp_path / "root"))
    cli("fit", "--config", config, "--trainer.devices", "2", "--trainer.strategy", "ddp", "--model.hidden", "5",
        "--seed_everything", "true", "--summary.out_dir", tmp_path)
    ranks = [read_summary(tmp_path, "fit", rank) for rank in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["rank"] for r in ranks] == [0, 1]
    assert all(r["hparams"] == {"hidden": 5, "lr": 0.1} for r in ranks)  # rank 1 re-parsed the same argv
    assert all(r["global_step"] == 4 for r in ranks)  # 32 samples / 2 ranks / batch 4
    assert ranks[0]["weights"] == ranks[1]["weights"]
    # seed_everything: true picked one seed on rank 0, inherited by rank 1 and written to the saved config
    log_dir = Path(ranks[0]["log_dir"])
    assert ranks[0]["log_dir"] == ranks[1]["log_dir"]
    assert ranks[0]["seed"] == ranks[1]["seed"] == yaml.safe_load((log_dir / "config.yaml").read_text())[
        "seed_everything"]
    assert sorted(p.name for p in log_dir.glob("saved_by_rank*")) == ["saved_by_rank0"]


def test_example_runs_from_its_config(run_ranks, tmp_path):
    example = SCRIPT.parents[4] / "examples" / "loops"
    proc = run_ranks([example / "cli_train.py", "fit", "--config", example / "config.yaml", "--trainer.max_epochs", "1",
                      "--trainer.default_root_dir", tmp_path], check=False, timeout=180)
    assert proc.returncode == 0, proc.stderr
    log_dir = tmp_path / "lightning_logs" / "version_0"
    saved = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert saved["model"]["class_path"] == "__main__.DigitsClassifier" and saved["trainer"]["max_epochs"] == 1
    assert (log_dir / "checkpoints" / "last.ckpt").is_file()


def test_unparsable_yaml_exits_2_naming_the_file_without_traceback(cli, tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("trainer:\n  max_epochs: [1\n")
    proc = cli("fit", "--config", config, "--summary.out_dir", tmp_path, expect=2)
    assert f"config file '{config}' is not valid YAML" in proc.stderr and "line 2" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- in-process -------------------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def keep_seed_variables():
    """A CLI built in this process seeds and exports its seed; later tests here must not inherit it."""
    names = ("FABRIC_KIT_GLOBAL_SEED", "FABRIC_KIT_SEED_WORKERS", "PL_GLOBAL_SEED", "PL_SEED_WORKERS")
    saved = {name: os.environ.get(name) for name in names}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.mark.parametrize("args, message", [
    (["--model.hidden", "4", "--trainer.max_epochz", "2"], "trainer.max_epochz"),
    (["--model.hidden", "4", "--trainer.max_epoch", "2"], "--trainer.max_epoch"),  # no prefix matching
    (["--model.hidden", "4", "--trainer.max_epochs", "two"], 'Parser key "trainer.max_epochs"'),
    (["--model.hidden", "four"], 'Parser key "model.hidden"'),
    ([], "fit.model.hidden"),
    (["--model.hidden", "4", "--trainer.precision", "17"], "precision='17' is not supported"),
    (["--model.hidden", "4", "--ckpt_path", "best"], "--ckpt_path best: no checkpoint callback"),
])
def test_bad_input_exits_2_naming_the_key(capsys, tmp_path, args, message):
    with pytest.raises(SystemExit) as exited:
        LightningCLI(script.Net, script.RegressionData, trainer_defaults={"default_root_dir": str(tmp_path)},
                     args=["fit", "--trainer.accelerator", "cpu", *args])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_print_config_is_valid_input_for_every_subcommand(capsys, tmp_path):
    with pytest.raises(SystemExit) as exited:
        LightningCLI(script.Net, script.RegressionData, args=["test", "--model.hidden", "3", "--print_config"])
    assert exited.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"] == {"hidden": 3, "lr": 0.1} and "ckpt_path" in printed and "verbose" in printed


def test_run_false_builds_without_running(tmp_path):
    # Full class paths: once any test has imported bitsandbytes, its own SGD makes the short name ambiguous.
    with pytest.warns(UserWarning, match="Net.configure_optimizers is replaced"):
        cli = LightningCLI(script.Net, script.RegressionData, run=False, seed_everything_default=3,
                           trainer_defaults={"default_root_dir": str(tmp_path), "accelerator": "cpu"},
                           args=["--model.hidden", "2", "--optimizer", "torch.optim.SGD", "--optimizer.lr", "0.3",
                                 "--lr_scheduler", "loops.cli.ReduceLROnPlateau", "--lr_scheduler.monitor", "val_loss"])
    assert cli.subcommand is None and cli.config["seed_everything"] == 3
    assert cli.model.hparams == {"hidden": 2, "lr": 0.1} and cli.trainer.default_root_dir == str(tmp_path)
    configured = cli.model.configure_optimizers()
    assert isinstance(configured["optimizer"], torch.optim.SGD) and configured["optimizer"].param_groups[0]["lr"] == 0.3
    assert configured["lr_scheduler"]["monitor"] == "val_loss"


QUIET_FIT = ["fit", "--trainer.accelerator", "cpu", "--trainer.max_epochs", "1", "--trainer.logger", "false",
             "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
             "--trainer.enable_model_summary", "false", "--seed_everything", "false"]


def test_an_existing_config_is_kept_unless_overwrite(tmp_path):
    args = [*QUIET_FIT, "--trainer.default_root_dir", str(tmp_path), "--model.hidden", "2"]
    LightningCLI(script.Net, script.RegressionData, args=args)  # logger=False: log_dir is default_root_dir
    with pytest.raises(RuntimeError, match=f"{tmp_path / 'config.yaml'} already exists"):
        LightningCLI(script.Net, script.RegressionData, args=[*args, "--model.hidden", "3"])
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["model"]["hidden"] == 2
    LightningCLI(script.Net, script.RegressionData, save_config_kwargs={"overwrite": True},
                 args=[*args, "--model.hidden", "3"])
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["model"]["hidden"] == 3


def test_without_a_datamodule_the_model_brings_its_data(tmp_path):
    class WithData(script.Net):
        def train_dataloader(self):
            return script.RegressionData(n=8).train_dataloader()

    cli = LightningCLI(WithData, args=[*QUIET_FIT, "--trainer.default_root_dir", str(tmp_path), "--model.hidden", "2"])
    assert cli.datamodule is None and cli.trainer.global_step == 2  # 8 samples, batch 4
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["data"] is None


def test_predict_subcommand(tmp_path):
    class Predicting(script.Net):
        def predict_dataloader(self):
            return script.RegressionData().test_dataloader()  # 8 samples, batch 4

        def predict_step(self, batch, batch_idx):
            self.predicted = getattr(self, "predicted", 0) + len(batch[0])
            return self(batch[0])

    args = ["predict", "--trainer.accelerator", "cpu", "--trainer.logger", "false", "--trainer.enable_progress_bar",
            "false", "--trainer.default_root_dir", str(tmp_path), "--model.hidden", "2", "--seed_everything", "false"]
    cli = LightningCLI(Predicting, args=args)
    assert cli.subcommand == "predict" and cli.model.predicted == 8
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["return_predictions"] is None


def test_optimizers_injected_into_the_model_or_linked_to_an_argument(tmp_path):
    class Injected(script.Net):
        def __init__(self, optimizer: OptimizerCallable = torch.optim.Adam, hidden: int = 2) -> None:
            super().__init__(hidden=hidden)
            self.optimizer = optimizer

        def configure_optimizers(self):
            return self.optimizer(self.parameters())

    cli = LightningCLI(Injected, script.RegressionData, run=False, seed_everything_default=False,
                       args=["--model.optimizer", "torch.optim.SGD", "--model.optimizer.momentum", "0.5"])
    optimizer = cli.model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["momentum"] == 0.5

    class Linked(LightningCLI):
        def add_arguments_to_parser(self, parser):
            parser.add_optimizer_args(torch.optim.Adam, link_to="model.optimizer_init")

    class TakesConfig(script.Net):
        def __init__(self, optimizer_init: dict, hidden: int = 2) -> None:
            super().__init__(hidden=hidden)
            self.optimizer_init = optimizer_init

        def configure_optimizers(self):
            return instantiate_class(self.parameters(), self.optimizer_init)

    cli = Linked(TakesConfig, script.RegressionData, run=False, seed_everything_default=False,
                 args=["--optimizer.lr", "0.3"])
    assert cli.model.optimizer_init["class_path"] == "torch.optim.adam.Adam"
    optimizer = cli.model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["lr"] == 0.3


# -- an optional extra -----------------------------------------------------------------------------------------------
def test_import_loops_does_not_import_jsonargparse():
    code = "import sys, loops; print(sorted(m for m in sys.modules if m.split('.')[0] == 'jsonargparse'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_without_jsonargparse_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "jsonargparse", None)  # what an environment without it gives import
    for name in [m for m in sys.modules if m == "loops.cli" or m.startswith("loops.cli.")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'fabric_kit\[cli\]'"):
        importlib.import_module("loops.cli")


def test_ckpt_path_builds_the_model_from_the_checkpoints_hyperparameters(tmp_path):
    """As in Lightning, the saved hyperparameters win over the config and the command line, so the checkpoint's
    weights fit the model they are loaded into (hidden=5 would not)."""
    model = script.Net(hidden=3, lr=0.2)
    trainer = loops.Trainer(accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, script.RegressionData())
    path = tmp_path / "net.ckpt"
    trainer.save_checkpoint(path)
    cli = LightningCLI(script.Net, script.RegressionData, seed_everything_default=False,
                       args=["test", "--ckpt_path", str(path), "--model.hidden", "5", "--trainer.accelerator", "cpu",
                             "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                             "--trainer.default_root_dir", str(tmp_path)])
    assert cli.config.test.model.hidden == 3 and cli.model.hparams == {"hidden": 3, "lr": 0.2}
    assert torch.equal(cli.model.body[0].weight, model.body[0].weight)  # test(ckpt_path=...) loaded them
    assert "test_loss" in cli.trainer.callback_metrics


def test_strategy_and_trainer_defaults_given_by_class_path(tmp_path):
    strategy = {"class_path": "loops.strategies.DDPStrategy", "init_args": {"process_group_backend": "gloo"}}
    logger = {"class_path": "loops.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path / "csv")}}
    cli = LightningCLI(script.Net, script.RegressionData, run=False, seed_everything_default=False,
                       trainer_defaults={"accelerator": "cpu", "logger": logger},
                       args=["--model.hidden", "2", "--trainer.devices", "1",
                             "--trainer.strategy", json.dumps(strategy)])
    assert type(cli.trainer.strategy) is fabric_kit.strategies.DDPStrategy
    assert cli.trainer.strategy.process_group_backend == "gloo"
    assert isinstance(cli.trainer.logger, loops.loggers.CSVLogger)
    assert cli.trainer.logger.save_dir == str(tmp_path / "csv")
    # trainer_defaults may name the strategy and the accelerator by class_path too
    accelerator = {"class_path": "loops.accelerators.CPUAccelerator"}
    cli = LightningCLI(script.Net, script.RegressionData, run=False, seed_everything_default=False,
                       trainer_defaults={"accelerator": accelerator, "devices": 1, "strategy": strategy},
                       args=["--model.hidden", "2"])
    assert type(cli.trainer.strategy) is fabric_kit.strategies.DDPStrategy
    assert type(cli.trainer.accelerator) is fabric_kit.accelerators.CPUAccelerator
