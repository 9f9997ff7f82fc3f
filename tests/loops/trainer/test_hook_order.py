"""A fit with the sanity check, 2 training batches and validation calls hooks in Lightning 2.x's order (recorded
from Lightning 2.6 with the same module and callback; callbacks run before the module's hook of the same name)."""
import torch
from torch.utils.data import DataLoader, TensorDataset

import loops as L
from tests.helpers.loops import make_trainer

FIT_ORDER = """configure_callbacks prepare_data cb.setup(fit) setup(fit) configure_model configure_optimizers
cb.on_fit_start on_fit_start cb.on_sanity_check_start val_dataloader on_validation_model_eval cb.on_validation_start
on_validation_start cb.on_validation_epoch_start on_validation_epoch_start on_before_batch_transfer
transfer_batch_to_device on_after_batch_transfer cb.on_validation_batch_start on_validation_batch_start
validation_step cb.on_validation_batch_end on_validation_batch_end cb.on_validation_epoch_end on_validation_epoch_end
cb.on_validation_end on_validation_end on_validation_model_train cb.on_sanity_check_end train_dataloader
cb.on_train_start on_train_start cb.on_train_epoch_start on_train_epoch_start
TRAIN_BATCH TRAIN_BATCH
on_validation_model_eval cb.on_validation_start on_validation_start cb.on_validation_epoch_start
on_validation_epoch_start on_before_batch_transfer transfer_batch_to_device on_after_batch_transfer
cb.on_validation_batch_start on_validation_batch_start validation_step cb.on_validation_batch_end
on_validation_batch_end cb.on_validation_epoch_end on_validation_epoch_end cb.on_validation_end on_validation_end
on_validation_model_train cb.on_train_epoch_end on_train_epoch_end cb.on_train_end on_train_end cb.on_fit_end
on_fit_end cb.teardown(fit) teardown(fit)"""
TRAIN_BATCH = """on_before_batch_transfer transfer_batch_to_device on_after_batch_transfer cb.on_train_batch_start
on_train_batch_start optimizer_step training_step cb.on_before_zero_grad on_before_zero_grad optimizer_zero_grad
cb.on_before_backward on_before_backward backward cb.on_after_backward on_after_backward cb.on_before_optimizer_step
on_before_optimizer_step configure_gradient_clipping cb.on_train_batch_end on_train_batch_end"""
TEST_ORDER = """configure_callbacks prepare_data cb.setup(test) setup(test) configure_model test_dataloader
on_test_model_eval cb.on_test_start on_test_start cb.on_test_epoch_start on_test_epoch_start
BATCH BATCH cb.on_test_epoch_end on_test_epoch_end cb.on_test_end on_test_end on_test_model_train cb.teardown(test)
teardown(test)"""
TEST_BATCH = """on_before_batch_transfer transfer_batch_to_device on_after_batch_transfer cb.on_test_batch_start
on_test_batch_start test_step cb.on_test_batch_end on_test_batch_end"""
PREDICT_ORDER = """configure_callbacks prepare_data cb.setup(predict) setup(predict) configure_model
predict_dataloader on_predict_model_eval cb.on_predict_start on_predict_start cb.on_predict_epoch_start
on_predict_epoch_start BATCH BATCH cb.on_predict_epoch_end on_predict_epoch_end cb.on_predict_end on_predict_end
cb.teardown(predict) teardown(predict)"""
PREDICT_BATCH = TEST_BATCH.replace("test", "predict")

CALLBACK_HOOKS = [name for name in vars(L.Callback) if name.startswith("on_") or name in ("setup", "teardown")]
MODULE_HOOKS = ["on_fit_start", "on_fit_end", "on_train_start", "on_train_end", "on_validation_start",
                "on_validation_end", "on_train_epoch_start", "on_train_epoch_end", "on_validation_epoch_start",
                "on_validation_epoch_end", "on_train_batch_start", "on_train_batch_end", "on_validation_batch_start",
                "on_validation_batch_end", "on_before_backward", "on_after_backward", "on_before_optimizer_step",
                "on_before_zero_grad", "on_validation_model_eval", "on_validation_model_train", "prepare_data",
                "configure_model", "on_before_batch_transfer", "on_after_batch_transfer", "transfer_batch_to_device",
                "configure_callbacks", "configure_gradient_clipping", "on_test_start", "on_test_end",
                "on_test_epoch_start", "on_test_epoch_end", "on_test_batch_start", "on_test_batch_end",
                "on_test_model_eval", "on_test_model_train", "on_predict_start", "on_predict_end",
                "on_predict_epoch_start", "on_predict_epoch_end", "on_predict_batch_start", "on_predict_batch_end",
                "on_predict_model_eval", "optimizer_step", "optimizer_zero_grad", "backward"]


def _expand(order, batch, marker):
    return order.replace(marker, batch).split()


def _recorder(calls):
    def make(name):
        def hook(self, trainer, pl_module, *args, **kwargs):
            stage = f"({args[0]})" if name in ("setup", "teardown") else ""
            calls.append(f"cb.{name}{stage}")
        return hook

    return type("Recorder", (L.Callback,), {name: make(name) for name in CALLBACK_HOOKS})()


def _module(calls):
    def make(name):
        base = getattr(L.LightningModule, name)

        def hook(self, *args, **kwargs):
            calls.append(name)
            return base(self, *args, **kwargs)
        return hook

    def loader(name):
        def make_loader(self):
            calls.append(name)
            return DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)
        return make_loader

    def step(name, returns_loss=False):
        def run(self, batch, batch_idx):
            calls.append(name)
            return self.layer(batch[0]).sum() if returns_loss else 1
        return run

    namespace = {name: make(name) for name in MODULE_HOOKS}
    namespace.update({f"{s}_dataloader": loader(f"{s}_dataloader") for s in ("train", "val", "test", "predict")})
    namespace.update(training_step=step("training_step", True), validation_step=step("validation_step"),
                     test_step=step("test_step"), predict_step=step("predict_step"))

    def __init__(self):
        L.LightningModule.__init__(self)
        self.layer = torch.nn.Linear(2, 1)

    def setup(self, stage):
        calls.append(f"setup({stage})")

    def teardown(self, stage):
        calls.append(f"teardown({stage})")

    def configure_optimizers(self):
        calls.append("configure_optimizers")
        return torch.optim.SGD(self.parameters(), lr=0.1)

    namespace.update(__init__=__init__, setup=setup, teardown=teardown, configure_optimizers=configure_optimizers)
    return type("Recorded", (L.LightningModule,), namespace)()


def _run(stage):
    calls = []
    trainer = make_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=1,
                           callbacks=[_recorder(calls)])
    getattr(trainer, stage)(_module(calls))
    return calls


def test_fit_hook_order_matches_lightning():
    assert _run("fit") == _expand(FIT_ORDER, TRAIN_BATCH, "TRAIN_BATCH")


def test_test_hook_order_matches_lightning():
    assert _run("test") == _expand(TEST_ORDER, TEST_BATCH, "BATCH")


def test_predict_hook_order_matches_lightning():
    assert _run("predict") == _expand(PREDICT_ORDER, PREDICT_BATCH, "BATCH")
