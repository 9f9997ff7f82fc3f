"""The fit loop's position survives Lightning's progress-counter layout: what loops writes reads back as the same
resume point, and the counters Lightning writes at each place it saves read as that place."""
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from loops.trainer.loop_state import LoopPosition, decode, encode


@st.composite
def positions(draw):
    batches = draw(st.integers(0, 50))
    epoch_done = draw(st.booleans())
    global_step = draw(st.integers(0, 500))
    return LoopPosition(epoch=draw(st.integers(0, 20)), epoch_done=epoch_done, batches=batches,
                        total_batches=batches + draw(st.integers(0, 500)), batches_stepped=draw(st.integers(0, 500)),
                        uncounted=batches > 0 and draw(st.booleans()), global_step=global_step,
                        automatic=draw(st.booleans()) or global_step == 0, last_batch=draw(st.booleans()))


@given(positions())
def test_a_position_reads_back_as_the_same_resume_point(position):
    expected = position
    if position.epoch_done:  # the epoch is over: its last step is counted in the file, nothing is left pending
        expected = replace(position, uncounted=False, batches_stepped=position.batches_stepped + position.uncounted)
    assert decode(encode(position)) == expected


def _progress(ready, started, processed, completed):
    counts = dict(ready=ready, started=started, processed=processed, completed=completed)
    return {"current": counts, "total": counts}


def _lightning(epochs, batches, stepped=5):
    return {"epoch_progress": _progress(*epochs), "epoch_loop.batch_progress": {**_progress(*batches),
                                                                                "is_last_batch": False},
            "epoch_loop.state_dict": {"_batches_that_stepped": stepped},
            "epoch_loop.automatic_optimization.optim_progress": {"optimizer": {"step": _progress(7, 7, 7, 7)}}}


def test_lightnings_counters_read_as_where_it_saved():
    # on_train_batch_end of batch 3 in epoch 1: batch 3 processed, not completed; its step not yet counted
    mid = decode(_lightning((2, 2, 1, 1), (3, 3, 3, 2)))
    assert (mid.epoch, mid.epoch_done, mid.batches, mid.uncounted, mid.global_step) == (1, False, 3, True, 7)
    # the validation after batch 3: completed too; counted only if validation is due there
    assert decode(_lightning((2, 2, 1, 1), (3, 3, 3, 3))).uncounted is None
    # on_train_batch_start of batch 4: the batch is ready, the one before it done
    assert decode(_lightning((2, 2, 1, 1), (4, 3, 3, 3))).uncounted is False
    # on_train_epoch_end of epoch 1: processed, not completed
    end = decode(_lightning((2, 2, 2, 1), (8, 8, 8, 8)))
    assert (end.epoch, end.epoch_done, end.batches_stepped) == (1, True, 5)
    # after fit: every epoch completed, the batch counters of the last one left as they were
    after = decode(_lightning((2, 2, 2, 2), (8, 8, 8, 8)))
    assert (after.epoch, after.epoch_done, after.batches) == (2, False, 0)
