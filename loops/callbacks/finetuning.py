"""Fine-tuning schedules: freeze parts of a model before training and unfreeze them later, each into a new
optimizer parameter group with its own learning rate. BaseFinetuning holds the freezing tools; BackboneFinetuning
is the ready-made schedule for a module with a `backbone`."""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer

from fabric_kit.utilities.rank_zero import rank_zero_warn
from loops.callbacks.callback import Callback

if TYPE_CHECKING:
    from loops.trainer.trainer import Trainer

log = logging.getLogger(__name__)

Modules = nn.Module | Iterable[nn.Module | Iterable[Any]]


def multiplicative(epoch: int) -> float:
    """BackboneFinetuning's default schedule: the backbone learning rate doubles every epoch (Lightning's)."""
    return 2.0


class BaseFinetuning(Callback):
    """Override `freeze_before_training(pl_module)` (called at setup, before `configure_optimizers`, so an
    optimizer built from `filter(lambda p: p.requires_grad, ...)` leaves the frozen parameters out) and
    `finetune_function(pl_module, epoch, optimizer)` (called at every epoch start for every optimizer).

    Resuming from a checkpoint written after parameter groups were added is not supported yet: the optimizer
    state is loaded before callbacks could add the groups back. Under DDP, parameters unfrozen after the model
    was wrapped are not synchronised; unfreeze before fit or train on one process."""

    @staticmethod
    def flatten_modules(modules: Modules) -> list[nn.Module]:
        """The leaf modules (and parents that own parameters directly) of a module or nested iterable of them."""
        if isinstance(modules, nn.ModuleDict):
            modules = modules.values()
        if isinstance(modules, Iterable):
            found: list[nn.Module] = []
            for module in modules:
                found.extend(BaseFinetuning.flatten_modules(module))
            return found
        return [m for m in modules.modules() if not list(m.children()) or m._parameters]

    @staticmethod
    def filter_params(modules: Modules, train_bn: bool = True, requires_grad: bool = True) -> Iterator[nn.Parameter]:
        """Parameters of `modules` whose requires_grad equals `requires_grad` (BatchNorm layers skipped unless
        `train_bn`)."""
        for module in BaseFinetuning.flatten_modules(modules):
            if isinstance(module, _BatchNorm) and not train_bn:
                continue
            for param in module.parameters(recurse=False):
                if param.requires_grad == requires_grad:
                    yield param

    @staticmethod
    def make_trainable(modules: Modules) -> None:
        for module in BaseFinetuning.flatten_modules(modules):
            if isinstance(module, _BatchNorm):
                module.track_running_stats = True
            for param in module.parameters(recurse=False):
                param.requires_grad = True

    @staticmethod
    def freeze_module(module: nn.Module) -> None:
        """No gradients for the module's own parameters; a BatchNorm layer also stops tracking statistics."""
        if isinstance(module, _BatchNorm):
            module.track_running_stats = False
        for param in module.parameters(recurse=False):
            param.requires_grad = False

    @staticmethod
    def freeze(modules: Modules, train_bn: bool = True) -> None:
        """Freeze every layer of `modules`; with `train_bn` BatchNorm layers stay trainable."""
        for module in BaseFinetuning.flatten_modules(modules):
            if isinstance(module, _BatchNorm) and train_bn:
                BaseFinetuning.make_trainable(module)
            else:
                BaseFinetuning.freeze_module(module)

    @staticmethod
    def filter_on_optimizer(optimizer: Optimizer, params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
        """`params` that the optimizer does not train yet; a warning names how many it already does (Lightning
        warns too), since they keep the group and learning rate they have."""
        known = {id(p) for group in optimizer.param_groups for p in group["params"]}
        params = list(params)
        new = [p for p in params if id(p) not in known]
        if len(new) < len(params):
            rank_zero_warn(f"{len(params) - len(new)} of the parameters to add to the optimizer are in one of its "
                           "parameter groups already; they are skipped and keep their group's settings")
        return new

    @staticmethod
    def unfreeze_and_add_param_group(modules: Modules, optimizer: Optimizer, lr: float | None = None,
                                     initial_denom_lr: float = 10.0, train_bn: bool = True) -> None:
        """Unfreeze `modules` and give their parameters a new group of `optimizer` with learning rate `lr`
        (default: the first group's rate divided by `initial_denom_lr`)."""
        BaseFinetuning.make_trainable(modules)
        group_lr = optimizer.param_groups[0]["lr"] / initial_denom_lr if lr is None else float(lr)
        params = BaseFinetuning.filter_on_optimizer(optimizer, BaseFinetuning.filter_params(modules, train_bn))
        if params:
            optimizer.add_param_group({"params": params, "lr": group_lr})

    # -- hooks ----------------------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if trainer.fabric.strategy.owns_optimizer:
            raise ValueError(f"{type(self).__name__} adds optimizer parameter groups during training, which the "
                             f"{type(trainer.fabric.strategy).__name__} (its engine owns the optimizer) does not "
                             "allow; use another strategy or remove the callback")
        self.freeze_before_training(pl_module)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: Any) -> None:
        for optimizer in trainer.optimizers:
            self.finetune_function(pl_module, trainer.current_epoch, optimizer)

    def finetune_function(self, pl_module: Any, epoch: int, optimizer: Optimizer) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define finetune_function(pl_module, epoch, optimizer)")

    def freeze_before_training(self, pl_module: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define freeze_before_training(pl_module)")


class BackboneFinetuning(BaseFinetuning):
    """Freeze `pl_module.backbone` until epoch `unfreeze_backbone_at_epoch` (0-based), then train it in a new
    parameter group starting at `backbone_initial_lr` (default: the current learning rate times
    `backbone_initial_ratio_lr`); each later epoch multiplies its rate by `lambda_func(epoch + 1)`, capped at the
    main rate when `should_align`."""

    def __init__(self, unfreeze_backbone_at_epoch: int = 10, lambda_func: Callable[[int], float] = multiplicative,
                 backbone_initial_ratio_lr: float = 10e-2, backbone_initial_lr: float | None = None,
                 should_align: bool = True, initial_denom_lr: float = 10.0, train_bn: bool = True,
                 verbose: bool = False, rounding: int = 12) -> None:
        if isinstance(unfreeze_backbone_at_epoch, bool) or not isinstance(unfreeze_backbone_at_epoch, int) \
                or unfreeze_backbone_at_epoch < 0:
            raise ValueError(f"unfreeze_backbone_at_epoch={unfreeze_backbone_at_epoch!r}: pass an int >= 0")
        self.unfreeze_backbone_at_epoch = unfreeze_backbone_at_epoch
        self.lambda_func = lambda_func
        self.backbone_initial_ratio_lr = backbone_initial_ratio_lr
        self.backbone_initial_lr = backbone_initial_lr
        self.should_align = should_align
        self.initial_denom_lr = initial_denom_lr
        self.train_bn = train_bn
        self.verbose = verbose
        self.rounding = rounding
        self.previous_backbone_lr: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"previous_backbone_lr": self.previous_backbone_lr}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.previous_backbone_lr = state_dict["previous_backbone_lr"]

    @staticmethod
    def _backbone(pl_module: Any) -> nn.Module:
        backbone = getattr(pl_module, "backbone", None)
        if not isinstance(backbone, nn.Module):
            raise ValueError(f"BackboneFinetuning needs an nn.Module attribute `backbone` on "
                             f"{type(pl_module).__name__}; found {type(backbone).__name__}")
        return backbone

    def freeze_before_training(self, pl_module: Any) -> None:
        self.freeze(self._backbone(pl_module), train_bn=self.train_bn)

    def finetune_function(self, pl_module: Any, epoch: int, optimizer: Optimizer) -> None:
        current_lr = optimizer.param_groups[0]["lr"]
        if epoch == self.unfreeze_backbone_at_epoch:
            backbone_lr = self.backbone_initial_lr if self.backbone_initial_lr is not None \
                else current_lr * self.backbone_initial_ratio_lr
            self.unfreeze_and_add_param_group(self._backbone(pl_module), optimizer, backbone_lr,
                                              initial_denom_lr=self.initial_denom_lr, train_bn=self.train_bn)
        elif epoch > self.unfreeze_backbone_at_epoch and self.previous_backbone_lr is not None:
            backbone_lr = self.lambda_func(epoch + 1) * self.previous_backbone_lr
            if self.should_align and backbone_lr > current_lr:
                backbone_lr = current_lr
            optimizer.param_groups[-1]["lr"] = backbone_lr
        else:
            return
        self.previous_backbone_lr = backbone_lr
        if self.verbose:
            log.info(f"Epoch {epoch}: lr {round(current_lr, self.rounding)}, backbone lr "
                     f"{round(backbone_lr, self.rounding)}")
