"""The run state (loops/trainer/run_state.py): counters that resume from their checkpoint position, logging scopes
that always put the outer one back, snapshots the tuners restore as often as they need."""
import pytest

from loops.trainer.loop_state import decode, encode
from loops.trainer.run_state import Progress, RunState


def test_progress_resumes_where_its_checkpoint_position_says():
    saved = Progress(current_epoch=2, global_step=7, batch_idx=3, total_batch_idx=19, batches_stepped=6,
                     step_uncounted=True)
    resumed = Progress()
    resumed.resume(decode(encode(saved.position(automatic=True, last_batch=False))))
    assert (resumed.current_epoch, resumed.global_step, resumed.total_batch_idx, resumed.batches_stepped) == \
        (2, 7, 19, 6)
    assert resumed.take_resume_skip() == (3, True)  # skip the 3 trained batches; the last one's step uncounted
    assert resumed.take_resume_skip() == (0, False)  # once: the next epoch starts at its beginning


def test_a_finished_epoch_resumes_at_the_next_one():
    saved = Progress(current_epoch=1, global_step=8, batch_idx=4, total_batch_idx=8, batches_stepped=8)
    saved.finish_epoch()
    resumed = Progress()
    resumed.resume(decode(encode(saved.position(automatic=True, last_batch=True))))
    assert (resumed.current_epoch, resumed.take_resume_skip()) == (2, (0, False))


def test_a_logging_scope_puts_the_outer_one_back_also_when_its_block_raises():
    state = RunState()
    outer = state.scope
    with pytest.raises(KeyError):
        with state.logging_scope(None, per_step=True) as scope:
            assert state.scope is scope and (scope.on_step, scope.on_epoch) == (True, False)
            raise KeyError("a hook failed")
    assert state.scope is outer and (outer.on_step, outer.on_epoch) == (False, True)


def test_a_snapshot_restores_in_place_as_often_as_needed():
    state = RunState()
    progress, stage = state.progress, state.state
    saved = state.snapshot()
    for _ in range(2):  # the batch-size search restores after every trial
        progress.optimizer_stepped()
        progress.batch_trained(0, stepped=True)
        stage.set_stage("train", True)
        state.should_stop = True
        state.lr_scheduler_configs.append(object())
        state.restore(saved)
        assert state.progress is progress and progress == Progress()
        assert state.state is stage and stage.stage is None
        assert not state.should_stop and state.lr_scheduler_configs == []
