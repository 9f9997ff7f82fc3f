"""Prediction: run `predict_step` over each loader without gradients and collect what it returns.

With several processes (DDP) each predicts its own share of the data, every sample exactly once over all of them
(no padding duplicates), and `trainer.predict` returns that process's share, as Lightning does. To assemble
everything, write each process's outputs from a callback's `on_predict_batch_end` (what Lightning's
BasePredictionWriter does) or gather them with `trainer.strategy.all_gather`. Under "ddp_spawn" the launching
process receives rank 0's share."""
from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from loops.trainer.data import DataloaderIter, batches, step_calls
from loops.trainer.router import pulls_batches

if TYPE_CHECKING:
    from loops.trainer.trainer import Trainer


def run_prediction(trainer: Trainer, loaders: list[Any], limits: list[int | float],
                   return_predictions: bool) -> list[Any] | None:
    """One list of predictions per loader (just the list when there is one loader), or None. A `predict_step`
    taking `dataloader_iter` fetches its batches from each loader in turn; each call gives one prediction."""
    state = trainer.run_state
    hooks, fabric_module, device = state.hooks, state.fabric_module, trainer.fabric.device
    multiple, run_step = len(loaders) > 1, hooks.steps(fabric_module)
    pulls = pulls_batches(hooks.pl_module.predict_step)
    all_predictions: list[list[Any]] = []
    # No results: nothing here may log. The dispatcher names the hook that tries; between hooks the step runs.
    with state.logging_scope(None, per_step=False) as scope:
        scope.hook = "predict_step"
        hooks.call_on(hooks.pl_module, "on_predict_model_eval")
        with torch.inference_mode() if trainer.inference_mode else torch.no_grad():
            hooks.call("on_predict_start")
            hooks.call("on_predict_epoch_start")
            for dataloader_idx, (loader, limit) in enumerate(zip(loaders, limits, strict=False)):
                extra = (dataloader_idx,) if multiple else ()
                predictions: list[Any] = []
                all_predictions.append(predictions)
                if limit <= 0:
                    continue
                fetched = hooks.batches("[_PredictionLoop].predict_next", batches(loader))
                pulled = DataloaderIter(fetched, 0, 0, limit, dataloader_idx) if pulls else None
                transfer = partial(hooks.transfer, dataloader_idx=dataloader_idx, device=device)
                for step_input, batch, batch_idx in step_calls(fetched, limit, pulled, transfer):
                    hooks.call("on_predict_batch_start", batch, batch_idx, *extra)
                    try:
                        output = run_step("predict_step", step_input, batch_idx, *extra).value
                    except StopIteration:
                        if pulled is None:
                            raise
                        break  # the step asked for a batch past the last: the loader is done (Lightning's rule)
                    if pulled is not None:  # the hooks after the step see the batch it fetched last
                        batch, batch_idx = pulled.batch, pulled.batch_idx
                    hooks.call("on_predict_batch_end", output, batch, batch_idx, *extra)
                    if return_predictions:
                        predictions.append(output)
            hooks.call("on_predict_epoch_end")
            hooks.call("on_predict_end")
    if not return_predictions:
        return None
    return all_predictions if multiple else all_predictions[0]
