"""The checkpoint engine that makes DeepSpeed read its files with the safe loader, in this process (the 2-process
runs of test_deepspeed.py load real checkpoints of stages 1-3 through it).

DeepSpeed's fp16 dynamic loss scaler appears in checkpoints only with fp16 training, which DeepSpeed refuses on
CPU: its objects are saved here directly, as the ZeRO optimizers store them.
"""
import importlib.util
from collections import OrderedDict
from types import SimpleNamespace

import pytest
import torch

from fabric_kit.checkpoint import UnsafeCheckpointError
from tests.helpers.crafted import TouchesMarker

pytestmark = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                reason="DeepSpeed is not installed: pip install 'fabric_kit[deepspeed]' "
                                       "--no-build-isolation")


class DeepSpeedsOwnEngine:
    """Stands in for the engine DeepSpeed created: records what reached it."""

    def __init__(self):
        self.calls = []

    def load(self, path, map_location=None):
        self.calls.append(("load", path))
        return torch.load(path, weights_only=False)

    def save(self, state_dict, path):
        self.calls.append(("save", path))
        torch.save(state_dict, path)


def _engine(**answers):
    """A DeepSpeed engine as far as `safe_loading` asks it."""
    return SimpleNamespace(checkpoint_engine=DeepSpeedsOwnEngine(),
                           load_universal_checkpoint=lambda: answers.get("universal", False),
                           zero_optimization_partition_weights=lambda: answers.get("stage_3", False))


def test_the_types_deepspeed_stores_load_with_the_safe_loader(tmp_path):
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    from fabric_kit.strategies.deepspeed_checkpoint_engine import SafeCheckpointEngine

    dynamic = DynamicLossScaler(init_scale=2**16, scale_window=1000, min_scale=1, delayed_shift=2,
                                consecutive_hysteresis=False)
    dynamic.cur_iter, dynamic.cur_scale = 17, 2.0**12
    saved = {"loss_scaler": LossScaler(1), "fp16_loss_scaler": dynamic, "zero_stage": ZeroStageEnum.gradients,
             "param_slice_mappings": [OrderedDict(weight=fragment_address(numel=6, start=2))],
             "shapes": [OrderedDict(weight=torch.Size([2, 3]))], "exp_avg": torch.arange(6.0)}
    path = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save(saved, path)
    own = DeepSpeedsOwnEngine()
    loaded = SafeCheckpointEngine(own).load(str(path), map_location="cpu")
    assert own.calls == []  # read by the safe loader, not DeepSpeed's
    assert type(loaded["loss_scaler"]) is LossScaler and loaded["loss_scaler"].cur_scale == 1
    assert type(loaded["fp16_loss_scaler"]) is DynamicLossScaler
    assert vars(loaded["fp16_loss_scaler"]) == vars(dynamic)
    assert loaded["zero_stage"] is ZeroStageEnum.gradients
    assert loaded["param_slice_mappings"][0]["weight"] == fragment_address(numel=6, start=2)
    assert loaded["shapes"] == saved["shapes"] and torch.equal(loaded["exp_avg"], saved["exp_avg"])


def test_a_crafted_file_is_refused_and_the_full_unpickler_is_deepspeeds(tmp_path):
    from fabric_kit.strategies.deepspeed_checkpoint_engine import SafeCheckpointEngine

    marker, path = tmp_path / "marker", tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": TouchesMarker(marker)}, path)
    engine = SafeCheckpointEngine(DeepSpeedsOwnEngine())
    with pytest.raises(UnsafeCheckpointError, match="weights_only=False") as info:
        engine.load(str(path))
    assert info.value.path == str(path) and "Unsupported global" in str(info.value)
    assert not marker.exists()
    engine.weights_only = False
    engine.load(str(path))
    assert engine.inner.calls == [("load", str(path))] and marker.exists()


def test_everything_but_load_is_deepspeeds_own(tmp_path):
    from fabric_kit.strategies.deepspeed_checkpoint_engine import SafeCheckpointEngine

    own = DeepSpeedsOwnEngine()
    SafeCheckpointEngine(own).save({"x": 1}, str(tmp_path / "f.pt"))
    assert own.calls == [("save", str(tmp_path / "f.pt"))]


def test_safe_loading_installs_once_and_opts_in_only_inside():
    from fabric_kit.strategies.deepspeed_checkpoint_engine import SafeCheckpointEngine, safe_loading

    engine = _engine()
    with safe_loading(engine, "ckpt", weights_only=False, loads_optimizer=True):
        installed = engine.checkpoint_engine
        assert isinstance(installed, SafeCheckpointEngine) and not installed.weights_only
    assert installed.weights_only
    with safe_loading(engine, "ckpt", weights_only=True, loads_optimizer=True):
        assert engine.checkpoint_engine is installed and installed.weights_only


@pytest.mark.parametrize(("answers", "loads_optimizer", "words"), [
    ({"stage_3": True}, False, "zero_to_fp32"),
    ({"universal": True}, True, "universal checkpoint"),
])
def test_loads_deepspeed_reads_only_with_the_full_unpickler_are_refused(answers, loads_optimizer, words):
    from fabric_kit.strategies.deepspeed_checkpoint_engine import safe_loading

    with pytest.raises(UnsafeCheckpointError, match=words) as info:
        with safe_loading(_engine(**answers), "ckpt", weights_only=True, loads_optimizer=loads_optimizer):
            pytest.fail("the load ran")
    assert "weights_only=False" in str(info.value)
    with safe_loading(_engine(**answers), "ckpt", weights_only=False, loads_optimizer=loads_optimizer):
        pass  # the explicit opt-in
