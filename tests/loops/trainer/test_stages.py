"""validate / test / predict return values, datamodules as data sources, module state during a run, and the
errors for missing pieces."""
import pytest
import torch

import loops as L
from tests.helpers.loops import Regression, dataset, loader, make_trainer


class Data(L.LightningDataModule):
    def __init__(self, batch_size: int = 4):
        super().__init__()
        self.save_hyperparameters()
        self.stages = []

    def prepare_data(self):
        self.stages.append("prepare")

    def setup(self, stage):
        self.stages.append(stage)

    def train_dataloader(self):
        return loader(batch_size=self.hparams.batch_size)

    def val_dataloader(self):
        return loader(n=8, batch_size=self.hparams.batch_size)

    def test_dataloader(self):
        return loader(n=12, batch_size=self.hparams.batch_size)

    def predict_dataloader(self):
        return loader(n=12, batch_size=self.hparams.batch_size)


def test_validate_and_test_return_epoch_metrics_per_dataloader():
    model = Regression()
    trainer = make_trainer()
    val = trainer.validate(model, loader(n=8), verbose=False)
    x, y = dataset(8)[:]
    assert val == [{"val_loss": pytest.approx(torch.nn.functional.mse_loss(model(x), y).item(), rel=1e-5)}]
    assert trainer.callback_metrics["val_loss"].item() == pytest.approx(val[0]["val_loss"])
    assert model.training  # back in train mode afterwards
    assert trainer.test(model, datamodule=Data(), verbose=False)[0].keys() == {"test_loss"}


def test_fit_then_test_without_model_uses_the_fitted_one():
    trainer = make_trainer(max_epochs=1)
    data = Data()
    model = Regression()
    trainer.fit(model, data)
    assert data.stages[:2] == ["prepare", "fit"]
    assert trainer.test(datamodule=data, verbose=False)[0]["test_loss"] > 0
    assert data.stages[-1] == "test" and trainer.lightning_module is model


def test_predict_returns_step_outputs():
    model = Regression()
    predictions = make_trainer().predict(model, loader(n=12))
    assert len(predictions) == 3 and predictions[0].shape == (4, 1)
    assert torch.allclose(torch.cat(predictions), model(dataset(12)[:][0]))
    assert make_trainer().predict(model, datamodule=Data(), return_predictions=False) is None
    several = make_trainer().predict(model, [loader(n=4), loader(n=8)])
    assert [len(p) for p in several] == [1, 2]


def test_limit_test_and_predict_batches():
    assert len(make_trainer(limit_predict_batches=2).predict(Regression(), loader())) == 2
    calls = []

    class Model(Regression):
        def test_step(self, batch, batch_idx):
            calls.append(batch_idx)

    make_trainer(limit_test_batches=0.5).test(Model(), loader(), verbose=False)
    assert calls == [0, 1, 2, 3]


def test_no_grad_in_evaluation_and_module_state():
    seen = {}

    class Model(Regression):
        def validation_step(self, batch, batch_idx):
            seen["grad"] = torch.is_grad_enabled()
            seen["training"] = self.training
            seen["stage"] = (self.trainer.validating, self.trainer.sanity_checking, self.trainer.state.fn)

        def training_step(self, batch, batch_idx):
            seen["train"] = (self.training, self.trainer.training, self.global_step, self.current_epoch)
            return super().training_step(batch, batch_idx)

    trainer = make_trainer(max_epochs=1, limit_train_batches=1, num_sanity_val_steps=0)
    trainer.fit(Model(), loader(), loader(n=4))
    assert seen == {"grad": False, "training": False, "stage": (True, False, "fit"), "train": (True, True, 0, 0)}


def test_from_datasets():
    data = L.LightningDataModule.from_datasets(dataset(16), dataset(8), batch_size=4)
    trainer = make_trainer(max_epochs=1, num_sanity_val_steps=0)
    trainer.fit(Regression(), datamodule=data)
    assert trainer.num_training_batches == 4 and trainer.num_val_batches == [2]


def test_missing_training_step_is_a_clear_error():
    class NoStep(L.LightningModule):
        def configure_optimizers(self):
            return None

    with pytest.raises(NotImplementedError, match="defines no training_step"):
        make_trainer(max_epochs=1).fit(NoStep(), loader())


def test_missing_test_step_and_data():
    class NoTest(Regression):
        test_step = L.LightningModule.__dict__.get("test_step")

    with pytest.raises(NotImplementedError, match="test_step"):
        make_trainer().test(NoTest(), loader())
    with pytest.raises(ValueError, match="no test data"):
        make_trainer().test(Regression())
    with pytest.raises(ValueError, match="no training data"):
        make_trainer(max_epochs=1).fit(Regression())


def test_training_step_output_forms():
    outputs = []

    class Model(Regression):
        def training_step(self, batch, batch_idx):
            loss = self.loss(batch)
            return [loss, {"loss": loss, "extra": 1}, None][batch_idx % 3]

        def on_train_batch_end(self, out, batch, batch_idx):
            outputs.append(out)

    make_trainer(max_epochs=1, limit_train_batches=3).fit(Model(), loader())
    assert set(outputs[0]) == {"loss"} and outputs[1]["extra"] == 1 and outputs[2] is None

    class Bad(Regression):
        def training_step(self, batch, batch_idx):
            return "loss"

    with pytest.raises(TypeError, match="training_step returned a str"):
        make_trainer(max_epochs=1).fit(Bad(), loader())


def test_trainer_argument_errors_name_the_value():
    with pytest.raises(ValueError, match="val_check_interval=1.5"):
        make_trainer(val_check_interval=1.5)
    with pytest.raises(ValueError, match="accumulate_grad_batches=0"):
        make_trainer(accumulate_grad_batches=0)
    with pytest.raises(ValueError, match="gradient_clip_algorithm='l1'"):
        make_trainer(gradient_clip_algorithm="l1")
    with pytest.raises(ValueError, match="limit_train_batches=2.0"):
        make_trainer(limit_train_batches=2.0, max_epochs=1).fit(Regression(), loader())
    with pytest.raises(TypeError, match="loops.LightningModule"):
        make_trainer().fit(torch.nn.Linear(1, 1), loader())


def test_default_log_dir_layout(tmp_path):
    trainer = L.Trainer(default_root_dir=tmp_path, max_epochs=1, enable_progress_bar=False, accelerator="cpu")
    trainer.fit(Regression(), loader())
    assert trainer.log_dir == str(tmp_path / "lightning_logs" / "version_0")
    second = L.Trainer(default_root_dir=tmp_path, max_epochs=1, enable_progress_bar=False, accelerator="cpu")
    second.fit(Regression(), loader())
    assert second.log_dir.endswith("version_1")
    assert make_trainer(default_root_dir=tmp_path).log_dir == str(tmp_path)  # logger=False


def test_configure_callbacks_and_checkpoint_callbacks_last():
    from loops.callbacks import Checkpoint

    class Saver(Checkpoint):
        pass

    class Other(L.Callback):
        pass

    class Model(Regression):
        def configure_callbacks(self):
            return [Other()]

    saver, replaced = Saver(), Other()
    trainer = make_trainer(max_epochs=1, callbacks=[saver, replaced])
    trainer.fit(Model(), loader())
    assert trainer.callbacks[-1] is saver and replaced not in trainer.callbacks
    assert trainer.checkpoint_callback is saver and trainer.checkpoint_callbacks == [saver]


def test_strategy_facade_collectives_on_one_process():
    trainer = make_trainer()
    assert trainer.strategy.broadcast({"a": 1}) == {"a": 1}
    assert trainer.strategy.reduce_boolean_decision(True)
    assert trainer.world_size == 1 and trainer.global_rank == 0 and trainer.is_global_zero


@pytest.mark.parametrize("precision", ["64-true", "bf16-mixed"])
def test_precision_reaches_the_step(precision):
    seen = {}

    class Model(Regression):
        def training_step(self, batch, batch_idx):
            out = self(batch[0])
            seen["dtype"] = out.dtype
            return torch.nn.functional.mse_loss(out.float(), batch[1].float())

    make_trainer(max_epochs=1, limit_train_batches=2, precision=precision).fit(Model(), loader())
    assert seen["dtype"] == (torch.float64 if precision == "64-true" else torch.bfloat16)


def test_exception_reaches_callbacks_and_teardown_runs():
    events = []

    class Watch(L.Callback):
        def on_exception(self, trainer, pl_module, exception):
            events.append(("exception", str(exception)))

        def teardown(self, trainer, pl_module, stage):
            events.append(("teardown", stage))

    class Boom(Regression):
        def training_step(self, batch, batch_idx):
            raise RuntimeError("boom")

    trainer = make_trainer(max_epochs=1, callbacks=[Watch()])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(Boom(), loader())
    assert events == [("exception", "boom"), ("teardown", "fit")] and trainer.interrupted


def test_barebones_turns_off_logging():
    with pytest.raises(RuntimeError, match="barebones=True"):
        L.Trainer(barebones=True, accelerator="cpu", max_epochs=1).fit(Regression(), loader())
    with pytest.raises(ValueError, match="barebones=True"):
        L.Trainer(barebones=True, enable_checkpointing=True)


def test_init_module_creates_in_the_precision_dtype():
    trainer = make_trainer(precision="64-true")
    with trainer.init_module():
        model = Regression()
    assert model.layer.weight.dtype == torch.float64
