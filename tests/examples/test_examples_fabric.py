"""Every Fabric example runs as written, with tiny sizes, under the launcher and strategy it names (FSDP and
DeepSpeed examples are run in tests/strategies/, the XLA one in tests/xla/)."""
import runpy
from pathlib import Path

from tests.helpers.examples import ROOT, number_after, run_example
from tests.helpers.processes import as_one_process

FABRIC_RUN_2 = ("-m", "fabric_kit", "run", "--devices", "2")


def test_convert_raw_loop_before_and_after_both_train(clean_env, capsys):
    """`python before.py` and `python after.py` run in this process (a fresh interpreter each would be most of their
    time), after.py on 2 processes under `fabric run`."""
    # The shuffled order differs (Fabric's sampler shuffles by seed and epoch), so the losses are not compared.
    outs = []
    for script in ("before.py", "after.py"):
        with as_one_process():
            runpy.run_path(str(ROOT / "examples" / "fabric" / "convert_raw_loop" / script), run_name="__main__")
        outs.append(capsys.readouterr().out)
    outs.append(run_example(*FABRIC_RUN_2, "examples/fabric/convert_raw_loop/after.py"))
    for out in outs:
        assert number_after("epoch 2: loss", out) < number_after("epoch 0: loss", out)


def test_image_classifier_logs_checkpoints_and_resumes_on_two_processes(clean_env, tmp_path):
    out = run_example(*FABRIC_RUN_2, "examples/fabric/image_classifier.py", "--epochs", "2", "--out", tmp_path)
    assert "(2 process(es))" in out
    assert number_after("final accuracy:", out) > 0.5
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch-001.ckpt", "epoch-002.ckpt"]
    assert list(tmp_path.glob("lightning_logs/version_0/events.out.tfevents.*"))
    assert f"tensorboard --logdir {tmp_path}" in out

    again = run_example(*FABRIC_RUN_2, "examples/fabric/image_classifier.py", "--epochs", "3", "--out", tmp_path)
    assert f"resumed from {tmp_path / 'checkpoints' / 'epoch-002.ckpt'} after epoch 2" in again
    assert "epoch 1:" not in again and "epoch 3:" in again


def test_gan_trains_two_models_with_two_optimizers_on_two_processes(clean_env):
    out = run_example(*FABRIC_RUN_2, "examples/fabric/gan_two_optimizers.py", "--steps", "20", "--batch-size", "16")
    assert "(target 1.0, 2 process(es))" in out
    assert number_after("mean radius of generated points:", out) > 0


def test_kill_and_resume_ends_bit_identical(clean_env, tmp_path):
    out = run_example("examples/fabric/kill_and_resume.py", "--steps", "16", "--out", tmp_path)
    assert "exit status -9" in out
    assert "resumed from step-00005.ckpt at step 5" in out
    assert "final weights bit-identical: True" in out
    assert Path(tmp_path / "interrupted" / "final.pt").exists()
