"""LightningModule.to_torchscript (script / trace) and to_onnx: the exported model computes what the module does."""
import sys

import pytest
import torch
from torch import nn

import loops as L


class Net(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(4, 2)
        self.dropout = nn.Dropout(0.5)  # eval mode in the export: no randomness
        self.example_input_array = torch.randn(3, 4)

    def forward(self, x):
        return torch.relu(self.dropout(self.layer(x)))


@pytest.mark.parametrize("method", ["script", "trace"])
def test_to_torchscript(tmp_path, method):
    model = Net()
    x = torch.randn(5, 4)
    scripted = model.to_torchscript(tmp_path / "model.pt", method=method)
    assert model.training  # the module's mode is restored
    loaded = torch.jit.load(str(tmp_path / "model.pt"))
    expected = model.eval()(x)
    assert torch.equal(scripted(x), expected) and torch.equal(loaded(x), expected)


def test_to_torchscript_errors():
    model = Net()
    with pytest.raises(ValueError, match=r"method='compile'.*accepted: 'script', 'trace'"):
        model.to_torchscript(method="compile")
    model.example_input_array = None
    with pytest.raises(ValueError, match="needs an example input.*example_input_array"):
        model.to_torchscript(method="trace")


def test_to_onnx_exports_the_eval_graph_and_its_weights(tmp_path):
    onnx = pytest.importorskip("onnx")
    model = Net()
    path = tmp_path / "model.onnx"
    model.to_onnx(path)
    assert model.training
    graph = onnx.load(str(path)).graph
    onnx.checker.check_model(onnx.load(str(path)))
    assert [node.op_type for node in graph.node] == ["Gemm", "Relu"]  # dropout is gone in eval mode
    weights = {init.name: torch.from_numpy(onnx.numpy_helper.to_array(init).copy()) for init in graph.initializer}
    assert any(torch.equal(w, model.layer.weight) for w in weights.values())
    model.example_input_array = None
    with pytest.raises(ValueError, match="needs an example input"):
        model.to_onnx(tmp_path / "x.onnx")


def test_to_onnx_without_onnx_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)  # what an environment without onnx looks like to import
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'fabric_kit\[onnx\]'"):
        Net().to_onnx(tmp_path / "model.onnx")
