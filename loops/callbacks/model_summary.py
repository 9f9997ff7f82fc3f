"""ModelSummary: print the module's layers (name, type, parameter count, train/eval mode) and totals when fit
starts, on global rank 0. The Trainer adds one unless `enable_model_summary=False` or one is given."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from loops.callbacks.callback import Callback

if TYPE_CHECKING:
    from loops.trainer.trainer import Trainer


class ModelSummary(Callback):
    """`max_depth`: how deep to list submodules (1: direct children; -1: all; 0: no summary)."""

    def __init__(self, max_depth: int = 1) -> None:
        if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < -1:
            raise ValueError(f"ModelSummary(max_depth={max_depth!r}) is not valid; pass -1 (all levels), 0 (off) "
                             "or a positive int")
        self.max_depth = max_depth

    def on_fit_start(self, trainer: Trainer, pl_module: Any) -> None:
        if self.max_depth and trainer.is_global_zero:
            print(summarize(pl_module, self.max_depth))


def summarize(module: nn.Module, max_depth: int = 1) -> str:
    """The summary table of `module` down to `max_depth` levels, followed by parameter totals and size in MB."""
    rows = [(name, layer) for name, layer in module.named_modules()
            if name and (max_depth == -1 or name.count(".") < max_depth)]
    columns = [
        (" ", [str(i) for i in range(len(rows))]),
        ("Name", [name for name, _ in rows]),
        ("Type", [type(layer).__name__ for _, layer in rows]),
        ("Params", [human_readable_count(_count(layer.parameters())) for _, layer in rows]),
        ("Mode", ["train" if layer.training else "eval" for _, layer in rows]),
    ]
    widths = [max([len(header)] + [len(cell) for cell in cells]) for header, cells in columns]
    rule = "-" * (sum(widths) + 3 * len(columns))
    lines = [" | ".join(f"{header:<{w}}" for (header, _), w in zip(columns, widths, strict=False)), rule]
    lines += [" | ".join(f"{cells[i]:<{w}}" for (_, cells), w in zip(columns, widths, strict=False))
              for i in range(len(rows))]
    lines.append(rule)

    parameters = list(module.parameters())
    total = _count(parameters)
    trainable = _count(p for p in parameters if p.requires_grad)
    megabytes = sum(p.numel() * p.element_size() for p in parameters if not _uninitialized(p)) / 1e6
    modes = [m.training for m in module.modules()][1:]  # the module itself is not one of its layers
    totals = [(human_readable_count(trainable), "Trainable params"),
              (human_readable_count(total - trainable), "Non-trainable params"),
              (human_readable_count(total), "Total params"),
              (f"{megabytes:,.3f}", "Total estimated model params size (MB)"),
              (str(modes.count(True)), "Modules in train mode"),
              (str(modes.count(False)), "Modules in eval mode")]
    lines += [f"{value:<10}{label}" for value, label in totals]
    return "\n".join(lines)


def human_readable_count(number: int) -> str:
    """123 -> "123", 1234 -> "1.2 K", 2e6 -> "2.0 M" (K, M, B, T)."""
    units, scaled, index = ("", " K", " M", " B", " T"), float(number), 0
    while scaled >= 1000 and index < len(units) - 1:
        scaled, index = scaled / 1000, index + 1
    return str(int(number)) if index == 0 else f"{scaled:,.1f}{units[index]}"


def _uninitialized(parameter: Any) -> bool:
    return isinstance(parameter, nn.parameter.UninitializedParameter)


def _count(parameters: Any) -> int:
    """Elements of the parameters; lazy (not yet initialized) ones count 0."""
    return sum(p.numel() for p in parameters if not _uninitialized(p))
