"""The loops examples run as written, with tiny sizes; the digits classifier on 2 DDP processes."""
from tests.helpers.examples import number_after, run_example


def test_digits_classifier_fits_on_two_processes_and_tests_the_best_checkpoint(clean_env, tmp_path):
    out = run_example("examples/loops/digits_classifier.py", "--max-epochs", "2", "--root", tmp_path)
    checkpoints = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    assert f"best checkpoint: {checkpoints}" in out
    assert number_after("test accuracy of the best checkpoint:", out) > 0.5
    assert (checkpoints / "last.ckpt").exists()
    header = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"lr-AdamW", "val_acc", "train_loss_epoch"} <= set(header)
    assert list((tmp_path / "lightning_logs" / "version_0").glob("events.out.tfevents.*"))


def test_autoencoder_reloads_with_its_modules_passed_again(clean_env, tmp_path):
    out = run_example("examples/loops/autoencoder.py", "--max-epochs", "3", "--root", tmp_path)
    assert f"reloaded {tmp_path / 'lightning_logs' / 'version_0' / 'checkpoints' / 'last.ckpt'}" in out
    error = number_after("held-out reconstruction error (MSE) of the reloaded model:", out)
    assert error < number_after("predicting the mean image:", out)
