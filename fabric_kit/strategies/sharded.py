"""What the strategies whose set-up modules hold DTensor parameters share (FSDP; ModelParallel's FSDP2 x tensor
parallel): models created on the meta device, optimizers built only from the set-up module, gradient norms over
every rank's shards, and checkpoints through torch's state-dict API, either a DCP directory of every rank's shards
or one full file. A DCP directory loads into any other layout of the same model (DCP reshards by parameter name and
global shape), a full file into any strategy."""
from __future__ import annotations

import weakref
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import Tensor
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.tensor import DTensor
from torch.nn import Module
from torch.optim import Optimizer

from fabric_kit.checkpoint import sharded as checkpoint
from fabric_kit.checkpoint.directory import Records, verifying_directory
from fabric_kit.checkpoint.errors import reported_write_errors
from fabric_kit.checkpoint.io import load_file, save_new_file
from fabric_kit.checkpoint.sharded import DCP_METADATA, PLAIN_ENTRIES, ShardedStateDict, is_sharded_checkpoint
from fabric_kit.checkpoint.sharded_reading import load_sharded
from fabric_kit.checkpoint.sharded_writer import ReportingFileSystemWriter
from fabric_kit.checkpoint.state import Filter
from fabric_kit.empty_init import has_meta_tensors
from fabric_kit.strategies.parallel import ParallelStrategy
from fabric_kit.wrappers import unwrap

OPTIMIZER_AFTER_SETUP = ("`model = fabric.setup_module(model)`, then "
                         "`optimizer = torch.optim.AdamW(model.parameters())` and "
                         "`optimizer = fabric.setup_optimizers(optimizer)`")
"""How to build an optimizer over a sharded model's parameters, for the errors that refuse one built before."""


class ShardedStrategy(ParallelStrategy):
    """A parallel strategy whose `setup_module` replaces parameters by DTensors. Subclasses answer
    `full_checkpoints` and pass each module they set up to `_set_up`."""

    setup_module_first = True
    shards_parameters = True
    materializes_meta_modules = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._set_up_modules: weakref.WeakSet[Module] = weakref.WeakSet()

    @property
    def full_checkpoints(self) -> bool:
        """Whether `fabric.save` gathers one full file on rank 0 instead of a directory of every rank's shards."""
        return False

    @property
    def uses_checkpoint_io(self) -> bool:
        """A full checkpoint is one file, written through the CheckpointIO plugin; a sharded one is DCP's."""
        return self.full_checkpoints

    # -- modules and optimizers -----------------------------------------------------------------------------------
    def module_init_context(self, empty_init: bool | None = None) -> AbstractContextManager[Any]:
        """`empty_init=True` creates the model on the meta device (no memory); it materialises shard by shard in
        `setup_module`, each rank allocating only its shards."""
        if not empty_init:
            return super().module_init_context(empty_init)
        stack = ExitStack()
        stack.enter_context(torch.device("meta"))
        stack.enter_context(self.precision.module_init_context())
        return stack

    def module_to_device(self, module: Module) -> None:
        if not has_meta_tensors(module):  # meta tensors get their storage after sharding
            module.to(self.root_device)

    def setup_module_and_optimizers(self, module: Module, optimizers: list[Optimizer],
                                    scheduler: Any = None) -> tuple[Module, list[Optimizer], Any]:
        if optimizers:
            raise ValueError(self._create_optimizer_after(
                f"fabric.setup(model, optimizer) got {len(optimizers)} optimizer(s) created from the model before "
                "it was set up"))
        return super().setup_module_and_optimizers(module, optimizers, scheduler)

    def _set_up(self, module: Module) -> Module:
        """Remember `module` as set up, so that `setup_optimizer` can tell its parameters from stale ones."""
        self._set_up_modules.add(module)
        return module

    def setup_optimizer(self, optimizer: Optimizer) -> Optimizer:
        """Only an optimizer over parameters of set-up models: those of the model before `setup_module` were
        replaced (by shards), so an optimizer built from them would update nothing that trains."""
        modules = list(self._set_up_modules)
        if not modules:
            raise ValueError(self._create_optimizer_after(
                "fabric.setup_optimizers() was called before any model was set up"))
        current = {id(p) for module in modules for p in module.parameters()}
        params = [p for group in optimizer.param_groups for p in group["params"]]
        stale = sum(id(p) not in current for p in params)
        if stale:
            raise ValueError(self._create_optimizer_after(
                f"the {type(optimizer).__name__} holds {stale} of its {len(params)} parameters from a model that "
                "was not set up (created before `fabric.setup_module(model)`?)"))
        return optimizer

    def _create_optimizer_after(self, problem: str) -> str:
        return (f"{problem}. {type(self).__name__} replaces every parameter with a sharded one (a DTensor) when it "
                f"sets up the model, so the optimizer must be created afterwards: {OPTIMIZER_AFTER_SETUP}")

    def get_module_state_dict(self, module: Module) -> dict[str, Any]:
        """The full state dict, gathered from every rank's shards onto every rank (plain tensors, on the device)."""
        return get_model_state_dict(unwrap(module), options=StateDictOptions(full_state_dict=True))

    def load_module_state_dict(self, module: Module, state_dict: dict[str, Any], strict: bool = True) -> None:
        """Every rank passes the full state dict; each keeps its shards of it. The dict is left as it was (torch
        replaces its values by the shards)."""
        module = unwrap(module)
        if strict:  # torch's state-dict API loads a full dict that lacks entries without a word
            expected = set(module.state_dict())
            missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
            if missing or unexpected:
                raise RuntimeError(f"Error(s) in loading state_dict for {type(module).__name__}: Missing key(s) in "
                                   f"state_dict: {missing}; unexpected key(s): {unexpected}. Pass strict=False to "
                                   "load the entries that match")
        checkpoint.load_state_dicts({"module": module}, {}, {"module": dict(state_dict)}, strict=strict)

    # -- the training step ----------------------------------------------------------------------------------------
    def clip_gradients_norm(self, module: Module, optimizer: Optimizer, max_norm: float, norm_type: float = 2.0,
                            error_if_nonfinite: bool = True) -> Tensor:
        """The norm over all ranks' gradient shards, returned as a plain tensor (the same on every rank). Gradients
        on different device meshes (FSDP x TP parameters beside FSDP-only ones) are normed per mesh, then
        combined."""
        self.precision.unscale_gradients(optimizer)
        groups: dict[Any, tuple[list[Tensor], list[Tensor]]] = {}
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    params, grads = groups.setdefault(_mesh_of(p.grad), ([], []))
                    params.append(p)
                    grads.append(p.grad)
        norms = [_full(torch.nn.utils.get_total_norm(grads, norm_type)) for _, grads in groups.values()]
        total = self.combine_gradient_norms(torch.zeros((), device=self.root_device) if not norms
                                            else torch.linalg.vector_norm(torch.stack(norms), norm_type), norm_type)
        if error_if_nonfinite and not torch.isfinite(total):
            raise RuntimeError(f"the total norm of order {norm_type} of the gradients is {total.item()}, so they "
                               "cannot be clipped; pass error_if_nonfinite=False to clip anyway")
        for params, _ in groups.values():
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
        return total

    def combine_gradient_norms(self, norm: Tensor, norm_type: float) -> Tensor:
        """The norm of the whole model from this rank's (the identity where every rank's covers all of it)."""
        return norm

    # -- checkpoints: full state in one file, or every rank's shards in a DCP directory -------------------------
    def checkpoint_entries(self, state: dict[str, Any], filter: Filter) -> dict[str, Any]:
        """Models and optimizers through torch's state-dict API: full on rank 0 (`full_checkpoints`) or each rank's
        shards; the other entries as on one process."""
        modules, optimizers, rest = checkpoint.split_state(state)
        tensors = checkpoint.state_dicts(modules, optimizers, full=self.full_checkpoints, filter=filter)
        plain = super().checkpoint_entries(rest, {key: keep for key, keep in filter.items() if key in rest})
        return {key: tensors[key] if key in tensors else plain[key] for key in state}

    def write_entries(self, path: str, entries: dict[str, Any], state: dict[str, Any]) -> None:
        """Sharded: a directory of DCP's files, every rank writing its shards, and one file for the other entries,
        swapped in once every rank wrote (a full disk is a `CheckpointWriteError` on every rank and leaves the
        previous checkpoint as it was). Full: one file, from rank 0."""
        if self.full_checkpoints:
            super().write_entries(path, entries, state)
            return
        shards = {key: value for key, value in entries.items() if isinstance(value, ShardedStateDict)}
        written: Records = {}  # DCP's files, checksummed as they are written: the manifest needs no second read
        with self.checkpoint_directory(path, known=written) as staging:
            with reported_write_errors(path):
                dcp.save(shards, storage_writer=ReportingFileSystemWriter(staging, written))
            if self.is_global_zero:  # a file of the directory's format, not one for the CheckpointIO plugin
                written[PLAIN_ENTRIES] = save_new_file(
                    {key: value for key, value in entries.items() if key not in shards}, staging / PLAIN_ENTRIES)

    def read_entries(self, path: str, state: dict[str, Any] | None, strict: bool, weights_only: bool) -> Any:
        """A full file (also one a single-process run wrote), or a sharded directory, whose shards are read into
        those of `state`'s models and optimizers, whatever layout wrote them."""
        if not is_sharded_checkpoint(path):
            return super().read_entries(path, state, strict, weights_only)
        if state is None:
            raise ValueError(f"loading the sharded checkpoint {path!r} needs the objects to restore, e.g. "
                             "`fabric.load(path, {'model': model, 'optimizer': optimizer})`; to read it as plain "
                             f"tensors, run `fabric consolidate {path} --output FILE` and load FILE")
        # Every rank checks the manifest, the files' sizes and the small files read first (the same outcome on
        # every rank), and its share of the shards on a thread while it reads the other entries and DCP plans; DCP
        # reads no shard unless every rank's share verified. A refused or damaged file stops the load before any
        # shard is overwritten.
        verified = verifying_directory(path, self.global_rank, self.world_size,
                                       read_first=(PLAIN_ENTRIES, DCP_METADATA))
        entries = load_file(Path(path) / PLAIN_ENTRIES, weights_only=weights_only)
        modules, optimizers, _ = checkpoint.split_state(state)
        shards = checkpoint.state_dicts(modules, optimizers, full=False)
        load_sharded(shards, path, strict=strict, weights_only=weights_only, verified=verified)
        return {**entries, **shards}

    def restore_entries(self, state: dict[str, Any], entries: dict[str, Any], strict: bool) -> dict[str, Any]:
        """Models and optimizers through torch's state-dict API (full state is sliced into this rank's shards);
        the other entries as on one process."""
        modules, optimizers, rest = checkpoint.split_state(state)
        # Placeholders for the sharded objects, so strict loading names every missing entry in one place.
        placeholders = {**rest, **{key: None for key in (*modules, *optimizers)}}
        remainder = super().restore_entries(placeholders, entries, strict)
        checkpoint.load_state_dicts(modules, optimizers, entries, strict=strict)
        state.update({key: placeholders[key] for key in rest})
        return remainder


def _mesh_of(tensor: Tensor) -> Any:
    return tensor.device_mesh if isinstance(tensor, DTensor) else None


def _full(norm: Tensor) -> Tensor:
    return norm.full_tensor() if isinstance(norm, DTensor) else norm

