"""Which hooks may not call `self.log` (Lightning's rules). The hook dispatcher records the running hook in the
logging scope (`loops/trainer/hooks.py`), so a refused call names its hook."""
from __future__ import annotations

# Hooks whose self.log calls Lightning refuses (it points to `self.logger.experiment` instead).
NO_LOGGING = frozenset({
    "on_fit_start", "on_fit_end", "on_sanity_check_start", "on_sanity_check_end", "on_train_end",
    "on_validation_end", "on_test_end", "on_predict_start", "on_predict_end", "on_predict_epoch_start",
    "on_predict_epoch_end", "on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer",
    "on_predict_batch_start", "on_predict_batch_end", "on_exception", "state_dict", "on_save_checkpoint",
    "on_load_checkpoint", "load_state_dict", "setup", "teardown", "configure_sharded_model", "configure_model",
    "predict_step", "configure_optimizers", "train_dataloader", "val_dataloader", "test_dataloader",
    "predict_dataloader", "prepare_data", "configure_callbacks", "on_validation_model_zero_grad",
    "on_validation_model_eval", "on_test_model_eval", "on_validation_model_train", "on_test_model_train",
    "lr_scheduler_step", "on_preempt"})
