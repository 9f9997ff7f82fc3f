"""Validation and test: run the step over each loader without gradients, then publish the epoch reductions."""
from __future__ import annotations

import shutil
import sys
from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from loops.logging.metrics import to_floats
from loops.logging.results import Results
from loops.trainer.data import DataloaderIter, batches, set_sampler_epoch, step_calls
from loops.trainer.router import pulls_batches

if TYPE_CHECKING:
    from loops.trainer.trainer import Trainer

_PREFIX = {"validate": "validation", "test": "test"}


def run_evaluation(trainer: Trainer, stage: str, loaders: list[Any], limits: list[int | float],
                   sanity: bool = False) -> list[dict[str, float]]:
    """Run `validation_step` (stage "validate") or `test_step` over `loaders`; returns one metrics dict per loader
    (empty during the sanity check, whose logs are discarded). Without a batch to run nothing runs, no hook either
    (Lightning's rule). A step taking `dataloader_iter` fetches its batches from each loader in turn; its calls
    count as the batches do."""
    if sum(limits) == 0:
        return []
    if trainer.state.fn == "fit":
        for loader in loaders:
            set_sampler_epoch(loader, trainer.current_epoch)
    prefix = _PREFIX[stage]
    state = trainer.run_state
    hooks, fabric_module, device = state.hooks, state.fabric_module, trainer.fabric.device
    module = hooks.pl_module
    results = Results(trainer.fabric, training=False)  # processes may run different numbers of batches
    seen = state.eval_batches_seen
    multiple = len(loaders) > 1
    start_cbs, start_mod = hooks.cb(f"on_{prefix}_batch_start"), hooks.mod(f"on_{prefix}_batch_start")
    end_cbs, end_mod = hooks.cb(f"on_{prefix}_batch_end"), hooks.mod(f"on_{prefix}_batch_end")
    step_name, run_step = f"{prefix}_step", hooks.steps(fabric_module)
    pulls = pulls_batches(getattr(module, step_name))
    fetch = f"[_EvaluationLoop].{'val' if stage == 'validate' else 'test'}_next"
    # Per epoch by default; no batch outside the loop: what is logged there weighs the same on every process.
    with state.logging_scope(results, per_step=False) as scope:
        modes = [(m, m.training) for m in module.modules()]  # each submodule's own mode, put back after
        hooks.call_on(module, f"on_{prefix}_model_eval")
        with torch.inference_mode() if trainer.inference_mode else torch.no_grad():
            hooks.call(f"on_{prefix}_start")
            hooks.call(f"on_{prefix}_epoch_start")
            for dataloader_idx, (loader, limit) in enumerate(zip(loaders, limits, strict=False)):
                scope.dataloader_idx = dataloader_idx if multiple else None
                extra = (dataloader_idx,) if multiple else ()
                if limit <= 0:
                    continue
                fetched = hooks.batches(fetch, batches(loader))
                pulled = DataloaderIter(fetched, 0, 0, limit, dataloader_idx) if pulls else None
                transfer = partial(hooks.transfer, dataloader_idx=dataloader_idx, device=device)
                for step_input, batch, batch_idx in step_calls(fetched, limit, pulled, transfer):
                    scope.batch = batch
                    for hook in start_cbs:
                        hook(trainer, module, batch, batch_idx, *extra)
                    for hook in start_mod:
                        hook(batch, batch_idx, *extra)
                    scope.pulling_step = step_name if pulled is not None else None
                    try:
                        outputs = run_step(step_name, step_input, batch_idx, *extra)
                    except StopIteration:
                        if pulled is None:
                            raise
                        break  # the step asked for a batch past the last: the loader is done (Lightning's rule)
                    finally:
                        scope.pulling_step = None
                    if pulled is not None:  # the hooks after the step see the batch it fetched last
                        batch = scope.batch = pulled.batch
                        batch_idx = pulled.batch_idx
                    for hook in end_cbs:
                        hook(trainer, module, outputs, batch, batch_idx, *extra)
                    for hook in end_mod:
                        hook(outputs, batch, batch_idx, *extra)
                    if not sanity:
                        if results.step_logged:
                            state.metrics.eval_step_end(results, trainer.loggers, seen.get(dataloader_idx, 0),
                                                        f"/dataloader_idx_{dataloader_idx}" if multiple else "")
                        seen[dataloader_idx] = seen.get(dataloader_idx, 0) + 1
            scope.dataloader_idx = scope.batch = None
            hooks.call(f"on_{prefix}_epoch_end")
            per_loader: list[dict[str, float]] = []
            if not sanity:
                metrics = to_floats(state.metrics.epoch_end(results, trainer.loggers, state.progress.batches_stepped,
                                                            state.progress.current_epoch))
                per_loader = [_for_loader(metrics, i, multiple) for i in range(len(loaders))]
            results.reset_metrics()
            hooks.call(f"on_{prefix}_end")
        _back_to_train(trainer, stage, modes)
    return per_loader


def _back_to_train(trainer: Trainer, stage: str, modes: list[tuple[torch.nn.Module, bool]]) -> None:
    """The module's `on_<stage>_model_train` when it overrides it, else every submodule back in the mode it had
    before evaluation (a frozen BatchNorm stays in eval mode), as Lightning does."""
    hooks = trainer.run_state.hooks
    hook = "on_validation_model_train" if stage == "validate" else "on_test_model_train"
    if hooks.mod(hook):
        hooks.call_on(hooks.pl_module, hook)
        return
    for submodule, training in modes:
        submodule.training = training


def _for_loader(metrics: dict[str, float], index: int, multiple: bool) -> dict[str, float]:
    """Loader `index`'s metrics: its suffixed keys and the keys no loader owns."""
    if not multiple:
        return dict(metrics)
    return {k: v for k, v in metrics.items() if "/dataloader_idx_" not in k or k.endswith(f"/dataloader_idx_{index}")}


def print_results(stage: str, results: list[dict[str, float]]) -> None:
    table = results_table(stage, results, shutil.get_terminal_size(fallback=(120, 30)).columns or 120)
    if table:
        print(table)


def results_table(stage: str, results: list[dict[str, float]], width: int = 120) -> str:
    """Lightning's plain results table, `width` columns wide: a rule, "Test metric  DataLoader 0 ...", a rule, one
    centred row per metric (the "/dataloader_idx_N" suffix dropped: the column says which loader), a rule. Too
    many loaders for the width continue in further tables."""
    per_loader = [{name.split("/dataloader_idx_")[0]: value for name, value in metrics.items()}
                  for metrics in results]
    names = sorted({name for metrics in per_loader for name in metrics})
    if not names:
        return ""
    headers = [f"DataLoader {i}" for i in range(len(per_loader))]
    cell = int(min(max(max(map(len, names)), max(map(len, headers)), 25), width / 2))
    columns = max(1, (width - cell) // cell)
    rule = ("─" if _encodes("─") else "-") * width
    tables = []
    for first in range(0, len(headers), columns):
        loaders = range(first, min(first + columns, len(headers)))
        row = f"{{:^{cell}}}" * (len(loaders) + 1)
        lines = [rule, row.format(f"{stage} metric".capitalize(), *(headers[i] for i in loaders)).rstrip(), rule]
        for name in names:
            values = [str(per_loader[i][name]) if name in per_loader[i] else " " for i in loaders]
            lines.append(row.format(name, *values).rstrip())
        tables.append("\n".join([*lines, rule]))
    return "\n".join(tables)


def _encodes(character: str) -> bool:
    try:
        character.encode(sys.stdout.encoding or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return False
    return True
