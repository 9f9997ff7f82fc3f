"""Prediction: run `predict_step` over each loader without gradients and collect what it returns.

With several processes (DDP) each predicts its own share of the data, every sample exactly once over all of them
(no padding duplicates), and `trainer.predict` returns that process's share, as Lightning does. To assemble
everything, write each process's outputs from a callback's `on_predict_batch_end` (what Lightning's
BasePredictionWriter does) or gather them with `trainer.strategy.all_gather`. Under "ddp_spawn" the launching
process receives rank 0's share."""
from __future__ import annotations

from typing import Any

import torch


def run_prediction(trainer: Any, loaders: list[Any], limits: list[int | float],
                   return_predictions: bool) -> list[Any] | None:
    """One list of predictions per loader (just the list when there is one loader), or None."""
    hooks, module, fabric_module = trainer._hooks, trainer.lightning_module, trainer._fabric_module
    multiple = len(loaders) > 1
    module.on_predict_model_eval()
    start_cbs, start_mod = hooks.cb("on_predict_batch_start"), hooks.mod("on_predict_batch_start")
    end_cbs, end_mod = hooks.cb("on_predict_batch_end"), hooks.mod("on_predict_batch_end")
    all_predictions: list[list[Any]] = []
    with torch.inference_mode() if trainer.inference_mode else torch.no_grad():
        hooks.call("on_predict_start")
        hooks.call("on_predict_epoch_start")
        for dataloader_idx, (loader, limit) in enumerate(zip(loaders, limits)):
            extra = (dataloader_idx,) if multiple else ()
            predictions: list[Any] = []
            all_predictions.append(predictions)
            if limit <= 0:
                continue
            for batch_idx, batch in enumerate(loader):
                batch = trainer._transfer(batch, dataloader_idx)
                for hook in start_cbs:
                    hook(trainer, module, batch, batch_idx, *extra)
                for hook in start_mod:
                    hook(batch, batch_idx, *extra)
                output = fabric_module("predict_step", batch, batch_idx, *extra)
                for hook in end_cbs:
                    hook(trainer, module, output, batch, batch_idx, *extra)
                for hook in end_mod:
                    hook(output, batch, batch_idx, *extra)
                if return_predictions:
                    predictions.append(output)
                if batch_idx + 1 >= limit:
                    break
        hooks.call("on_predict_epoch_end")
        hooks.call("on_predict_end")
    if not return_predictions:
        return None
    return all_predictions if multiple else all_predictions[0]
