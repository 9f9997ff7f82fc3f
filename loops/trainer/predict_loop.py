"""Prediction: run `predict_step` over each loader without gradients and collect what it returns.

With several processes (DDP) each predicts its own share of the data, every sample exactly once over all of them
(no padding duplicates), and `trainer.predict` returns that process's share, as Lightning does. To assemble
everything, write each process's outputs from a callback's `on_predict_batch_end` (what Lightning's
BasePredictionWriter does) or gather them with `trainer.strategy.all_gather`. Under "ddp_spawn" the launching
process receives rank 0's share."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from loops.trainer.data import batches

if TYPE_CHECKING:
    from loops.trainer.trainer import Trainer


def run_prediction(trainer: Trainer, loaders: list[Any], limits: list[int | float],
                   return_predictions: bool) -> list[Any] | None:
    """One list of predictions per loader (just the list when there is one loader), or None."""
    state = trainer.run_state
    hooks, fabric_module, device = state.hooks, state.fabric_module, trainer.fabric.device
    multiple, run_step = len(loaders) > 1, hooks.steps(fabric_module)
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
                for batch_idx, batch in enumerate(hooks.batches("[_PredictionLoop].predict_next", batches(loader))):
                    batch = hooks.transfer(batch, dataloader_idx, device)
                    hooks.call("on_predict_batch_start", batch, batch_idx, *extra)
                    output = run_step("predict_step", batch, batch_idx, *extra).value
                    hooks.call("on_predict_batch_end", output, batch, batch_idx, *extra)
                    if return_predictions:
                        predictions.append(output)
                    if batch_idx + 1 >= limit:
                        break
            hooks.call("on_predict_epoch_end")
            hooks.call("on_predict_end")
    if not return_predictions:
        return None
    return all_predictions if multiple else all_predictions[0]
