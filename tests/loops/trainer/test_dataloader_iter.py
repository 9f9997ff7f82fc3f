"""`training_step(self, dataloader_iter)`, and validation / test / predict steps alike: the step fetches its
batches itself (Lightning detects it by the parameter's name). What the step and the batch hooks see, the optimizer
steps taken, the weights reached and the evaluation results are compared with Lightning 2.6's on the same
program."""
import pytest
import torch
from torch.utils.data import DataLoader

import loops
from tests.helpers.both_trainers import QUIET, pl, quiet  # noqa: F401


def plain(batch):
    return [plain(b) for b in batch] if isinstance(batch, list) else None if batch is None else batch.tolist()


def build(L, per_call, automatic=True):
    class Puller(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.layer = torch.nn.Linear(2, 1)
            self.automatic_optimization = automatic
            self.seen = []

        def training_step(self, dataloader_iter):
            pulled = [next(dataloader_iter) for _ in range(per_call)]
            self.seen.append(("step", [(plain(b), i, d) for b, i, d in pulled]))
            loss = sum(self.layer(torch.cat(b) if isinstance(b, list) else b).pow(2).mean() for b, _, _ in pulled)
            self.log("loss", loss, batch_size=2 * per_call)
            if automatic:
                return loss
            optimizer = self.optimizers()
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
            return None

        def on_train_batch_start(self, batch, batch_idx):
            self.seen.append(("start", plain(batch), batch_idx))

        def on_train_batch_end(self, outputs, batch, batch_idx):
            self.seen.append(("end", plain(batch), batch_idx))

        def on_train_epoch_end(self):
            self.seen.append(("epoch_end", self.trainer.global_step))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.001)

    return Puller()


def run(L):
    """Per case: what the module saw, the optimizer steps and the weights."""
    data = torch.arange(20.0).view(10, 2)
    cases = {"one_per_call": (1, True, {}), "two_per_call": (2, True, {}),
             "runs_out_in_a_step": (2, True, {"limit_train_batches": 3}), "manual": (2, False, {}),
             "combined": (1, True, {})}
    outcome = {}
    for name, (per_call, automatic, flags) in cases.items():
        model = build(L, per_call, automatic)
        train = DataLoader(data, batch_size=2)
        if name == "combined":
            train = L.utilities.CombinedLoader([DataLoader(data[:4], batch_size=2), train], "max_size_cycle")
        trainer = L.Trainer(max_epochs=2, **flags, **QUIET)
        trainer.fit(model, train)
        outcome[name] = (model.seen, trainer.global_step, [p.tolist() for p in model.parameters()])
    return outcome


def test_steps_that_pull_their_batches_run_as_lightnings(quiet):  # noqa: F811
    ours, theirs = run(loops), run(pl)
    assert ours == theirs
    # 5 batches an epoch: one per call steps 5 times; two per call twice, the third call running out
    assert [theirs[case][1] for case in ("one_per_call", "two_per_call", "runs_out_in_a_step")] == [10, 4, 2]


def test_logging_there_needs_the_batch_size(quiet):  # noqa: F811
    class Unsized(type(build(loops, 1))):
        def training_step(self, dataloader_iter):
            self.log("x", 1.0)

    model = Unsized()
    trainer = loops.Trainer(max_epochs=1, **QUIET)
    with pytest.raises(ValueError, match=r"self.log\('x'\) needs batch_size=... with training_step\(self, dataloader"):
        trainer.fit(model, DataLoader(torch.zeros(4, 2), batch_size=2))


def test_accumulation_with_a_step_that_fetches_its_batches_is_refused(tmp_path):
    trainer = loops.Trainer(max_epochs=1, accumulate_grad_batches=2,
                            default_root_dir=tmp_path, **QUIET)
    with pytest.raises(ValueError, match=r"dataloader_iter.*accumulate_grad_batches=2 is not supported"):
        trainer.fit(build(loops, 1), DataLoader(torch.zeros(4, 2), batch_size=2))


def build_evaluator(L, per_call):
    """validation_step / test_step / predict_step fetching `per_call` batches per call, recording what they and
    the batch hooks see."""
    class Evaluator(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.layer = torch.nn.Linear(2, 1)
            self.seen = []

        def pull(self, stage, dataloader_iter):
            pulled = [next(dataloader_iter) for _ in range(per_call)]
            self.seen.append((stage, [(plain(b), i, d) for b, i, d in pulled]))
            return sum(self.layer(b).sum() for b, _, _ in pulled)

        def training_step(self, batch, batch_idx):
            return self.layer(batch).pow(2).mean()

        def validation_step(self, dataloader_iter):
            self.log("val", self.pull("val", dataloader_iter), batch_size=2 * per_call)

        def test_step(self, dataloader_iter):
            self.log("test", self.pull("test", dataloader_iter), batch_size=2 * per_call)

        def predict_step(self, dataloader_iter):
            return self.pull("predict", dataloader_iter).item()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    for stage in ("validation", "test", "predict"):
        def start(self, batch, batch_idx, stage=stage):
            self.seen.append((f"{stage}_start", plain(batch), batch_idx))

        def end(self, outputs, batch, batch_idx, stage=stage):
            self.seen.append((f"{stage}_end", plain(batch), batch_idx))

        setattr(Evaluator, f"on_{stage}_batch_start", start)
        setattr(Evaluator, f"on_{stage}_batch_end", end)
    return Evaluator()


def run_evaluations(L):
    """Per case: what the module saw, and what validate / test / predict returned."""
    data = torch.arange(20.0).view(10, 2)
    outcome = {}
    for per_call in (1, 2):
        model = build_evaluator(L, per_call)
        trainer = L.Trainer(max_epochs=1, limit_train_batches=2, num_sanity_val_steps=2,
                            **{**QUIET, "enable_checkpointing": False})
        trainer.fit(model, DataLoader(data, batch_size=2), DataLoader(data, batch_size=2))
        loader = DataLoader(data[:6], batch_size=2)  # 3 batches: with two per call, the second call runs out
        results = (trainer.validate(model, loader, verbose=False), trainer.test(model, loader, verbose=False),
                   trainer.predict(model, loader))
        outcome[per_call] = (model.seen, results, [p.tolist() for p in model.parameters()])
    return outcome


def test_evaluation_steps_that_pull_their_batches_run_as_lightnings(quiet):  # noqa: F811
    ours, theirs = run_evaluations(loops), run_evaluations(pl)
    assert ours == theirs
    seen, (_, _, predicted), _ = theirs[2]
    # 3 batches, two per call: the second call's start hook sees batch 1, then the call runs out and gives nothing
    assert seen[-1] == ("predict_start", [[4.0, 5.0], [6.0, 7.0]], 1) and len(predicted) == 1
    assert [entry[0] for entry in theirs[1][0][:3]] == ["validation_start", "val", "validation_end"]


def test_an_evaluation_step_fetches_from_each_loader_in_turn(quiet):  # noqa: F811
    model = build_evaluator(loops, 2)
    trainer = loops.Trainer(**QUIET)
    loaders = [DataLoader(torch.zeros(6, 2), batch_size=2), DataLoader(torch.ones(4, 2), batch_size=2)]
    trainer.validate(model, loaders, verbose=False)
    pulls = [[(i, d) for _, i, d in entry[1]] for entry in model.seen if entry[0] == "val"]
    assert pulls == [[(0, 0), (1, 0)], [(0, 1), (1, 1)]]  # loader 0's third batch alone: that call ran out
    expected = [[pytest.approx(model.layer(torch.full((4, 2), value)).sum().item())] for value in (0.0, 1.0)]
    assert trainer.predict(model, loaders) == expected  # one call per loader: two batches each


def test_logging_in_an_evaluation_step_that_pulls_needs_the_batch_size(quiet):  # noqa: F811
    class Unsized(type(build_evaluator(loops, 1))):
        def validation_step(self, dataloader_iter):
            next(dataloader_iter)
            self.log("x", 1.0)

    with pytest.raises(ValueError, match=r"self.log\('x'\) needs batch_size=... with validation_step\(self, "
                                         r"dataloader_iter\)"):
        loops.Trainer(**QUIET).validate(Unsized(), DataLoader(torch.zeros(4, 2), batch_size=2))


@pytest.mark.parametrize("L", [pl, loops], ids=["lightning", "loops"])
def test_a_prediction_writer_refuses_a_predict_step_that_fetches_its_batches(L, quiet):  # noqa: F811
    """Which samples a `predict_step(self, dataloader_iter)` call predicted is not known, so neither Trainer gives
    a BasePredictionWriter batch indices for it: both refuse before predicting."""
    class Pulling(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)
            self.calls = 0

        def predict_step(self, dataloader_iter):
            self.calls += 1
            batch, _, _ = next(dataloader_iter)
            return self.layer(batch)

    class Writer(L.callbacks.BasePredictionWriter):
        def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                               dataloader_idx):
            raise AssertionError("no prediction may reach the writer")

    model, data = Pulling(), DataLoader(torch.arange(8.0).view(4, 2), batch_size=2)
    with pytest.raises(NotImplementedError, match="dataloader_iter"):
        L.Trainer(callbacks=[Writer()], **QUIET).predict(model, data)
    assert model.calls == 0
    assert len(L.Trainer(**QUIET).predict(model, data)) == 2  # without the writer it predicts
