"""Progress bars: the Trainer's defaults and their rules; on a real pseudo-terminal tqdm and rich draw bars with the
prog_bar metrics and v_num; through a pipe every bar writes plain lines (no carriage returns) every N steps and
when it finishes, from rank 0 only."""
import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

import loops as L
from loops.callbacks import ModelSummary, ProgressBar, RichProgressBar, TQDMProgressBar
from loops.callbacks.progress.line_display import format_line
from tests.helpers.processes import ROOT, process_environment

SCRIPT = Path(__file__).parent / "scripts" / "loops_progress_fit.py"


def _run_in_terminal(args, columns=120):
    """Run python `args` with stdin/stdout/stderr on a fresh pseudo-terminal of `columns` columns; all it wrote."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen([sys.executable, *map(str, args)], stdin=slave, stdout=slave, stderr=slave, cwd=ROOT,
                            env=process_environment(OMP_NUM_THREADS="1"))
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=120) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def _run_in_pipe(args):
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=process_environment(OMP_NUM_THREADS="1"),
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout
    return proc.stdout


def test_trainer_adds_a_progress_bar_and_a_summary_unless_given_or_disabled():
    trainer = L.Trainer(accelerator="cpu", logger=False)
    assert isinstance(trainer.progress_bar_callback, TQDMProgressBar)
    assert sum(isinstance(c, ModelSummary) for c in trainer.callbacks) == 1
    rich = RichProgressBar()
    summary = ModelSummary(max_depth=2)
    trainer = L.Trainer(accelerator="cpu", logger=False, callbacks=[rich, summary])
    assert trainer.progress_bar_callback is rich
    assert [c for c in trainer.callbacks if isinstance(c, (ProgressBar, ModelSummary))] == [rich, summary]
    quiet = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    assert quiet.progress_bar_callback is None and not any(isinstance(c, ModelSummary) for c in quiet.callbacks)
    with pytest.raises(ValueError, match=r"callbacks holds 2 progress bars \['TQDMProgressBar', 'RichProgressBar'\]"):
        L.Trainer(accelerator="cpu", callbacks=[TQDMProgressBar(), RichProgressBar()])
    with pytest.raises(ValueError, match=r"enable_progress_bar=False, but callbacks holds \['TQDMProgressBar'\]"):
        L.Trainer(accelerator="cpu", callbacks=[TQDMProgressBar()], enable_progress_bar=False)


@pytest.mark.parametrize("bad", [dict(refresh_rate=-1), dict(line_every_n_steps=0), dict(line_every_seconds=0)])
def test_bad_arguments_name_the_value(bad):
    name, value = next(iter(bad.items()))
    with pytest.raises(ValueError, match=rf"{name}={value!r}\)? is not valid"):
        TQDMProgressBar(**bad)


def test_tqdm_on_a_terminal_draws_frames_with_metrics_and_version(tmp_path):
    out = _run_in_terminal([SCRIPT, "tqdm", 1, tmp_path])
    assert "\r" in out and "Epoch 1: 100%" in out and "16/16" in out
    final_epoch = [frame for frame in out.split("\r") if frame.startswith("Epoch 1: 100%")][-1]
    assert "v_num=7" in final_epoch and "train_loss=" in final_epoch and "val_loss=" in final_epoch
    assert "Testing: 100%" in out


def test_rich_on_a_terminal_draws_its_bars(tmp_path):
    out = _run_in_terminal([SCRIPT, "rich", 1, tmp_path])
    assert "\x1b[" in out and "Epoch 1" in out and "16/16" in out  # rich's styled, redrawn lines
    assert "v_num: 7" in out and "val_loss:" in out


@pytest.mark.parametrize("bar", ["tqdm", "rich"])
def test_through_a_pipe_each_bar_writes_lines(tmp_path, bar):
    out = _run_in_pipe([SCRIPT, bar, 1, tmp_path])
    assert "\r" not in out and "\x1b[" not in out
    lines = out.splitlines()
    epoch_lines = [line for line in lines if line.startswith("Epoch 0:")]
    # every 5 of the 16 batches, then the epoch's end, which shows the epoch's validation too
    assert [line.split(" [")[0] for line in epoch_lines] == ["Epoch 0: 5/16", "Epoch 0: 10/16", "Epoch 0: 15/16",
                                                             "Epoch 0: 16/16"]
    assert "val_loss=" not in epoch_lines[0] and "val_loss=" in epoch_lines[-1]
    assert all("v_num=7" in line and "train_loss=" in line for line in epoch_lines)
    assert sum(line.startswith("Validation: 4/4") for line in lines) == 2  # once per epoch, at its end
    assert sum(line.startswith("Sanity Checking: 2/2") for line in lines) == 1
    assert sum(line.startswith("Testing: 4/4") for line in lines) == 1


def test_two_processes_report_once(tmp_path):
    out = _run_in_pipe([SCRIPT, "default", 2, tmp_path])
    lines = out.splitlines()
    # 8 batches per process; the default reports every 30 s, so here only at each bar's end, and only rank 0
    assert [line.split(" [")[0] for line in lines if line.startswith("Epoch")] == ["Epoch 0: 8/8", "Epoch 1: 8/8"]
    assert sum(line.startswith("Testing: 2/2") for line in lines) == 1


def test_line_format():
    line = format_line("Epoch 3", 50, 100, 2.0, {"v_num": 0, "train_loss": 0.123456})
    assert line == "Epoch 3: 50/100 [00:02<00:02, 25.00it/s] v_num=0 train_loss=0.1235"
    assert format_line("Validation", 7, None, 3700.0, {}) == "Validation: 7 [1:01:40, 0.00it/s]"


def test_disabled_bar_shows_nothing_in_process(capsys):
    from tests.helpers.loops import Regression, loader

    bar = TQDMProgressBar(refresh_rate=0)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_model_summary=False,
                        max_epochs=1, callbacks=[bar])
    trainer.fit(Regression(), loader())
    assert bar.is_disabled and capsys.readouterr().out == ""


def test_test_prints_lightnings_results_table(capsys, monkeypatch):
    from tests.helpers.loops import Regression, loader

    class TwoLoaders(Regression):
        def test_step(self, batch, batch_idx, dataloader_idx=0):
            self.log("test_loss", self.loss(batch))

    monkeypatch.setenv("COLUMNS", "80")
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    results = trainer.test(TwoLoaders(), [loader(n=8), loader(n=8, seed=1)])
    rule = "─" * 80 if (sys.stdout.encoding or "").lower().startswith("utf") else "-" * 80
    first, second = (f"{r[f'test_loss/dataloader_idx_{i}']}" for i, r in enumerate(results))
    assert capsys.readouterr().out.splitlines() == [
        rule, f"{'Test metric':^25}{'DataLoader 0':^25}{'DataLoader 1':^25}".rstrip(), rule,
        f"{'test_loss':^25}{first:^25}{second:^25}".rstrip(), rule]


def test_bar_counts_batches_for_subclasses():
    from tests.helpers.loops import Regression, loader

    class Recording(TQDMProgressBar):
        def __init__(self):
            super().__init__(refresh_rate=0)
            self.seen = []

        def on_train_epoch_end(self, trainer, pl_module):
            super().on_train_epoch_end(trainer, pl_module)
            self.seen.append((self.train_batch_idx, self.total_train_batches, self.val_batch_idx,
                              self.total_val_batches))

    bar = Recording()
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_model_summary=False,
                        max_epochs=2, callbacks=[bar])
    trainer.fit(Regression(), loader(), loader(n=8))
    assert bar.seen == [(8, 8, 2, 2), (8, 8, 2, 2)]
    assert trainer.progress_bar_callback is bar and bar.trainer is trainer
