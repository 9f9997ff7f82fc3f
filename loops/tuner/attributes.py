"""Where the tuners read and write a hyperparameter such as `lr` or `batch_size`: an attribute of the module, a key
of its `hparams`, an attribute of the datamodule or a key of its `hparams` (Lightning's lookup order)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loops.trainer.trainer import Trainer


def _holders(trainer: Trainer, name: str) -> list[tuple[Any, bool]]:
    """(object, is_mapping) pairs that hold `name`, in lookup order."""
    found = []
    for source in (trainer.lightning_module, trainer.datamodule):
        if source is None:
            continue
        if name in vars(source) or (hasattr(type(source), name) and not callable(getattr(type(source), name))):
            found.append((source, False))
        hparams = getattr(source, "hparams", None)
        if hparams is not None and name in hparams:
            found.append((hparams, True))
    return found


def has_attribute(trainer: Trainer, name: str) -> bool:
    return bool(_holders(trainer, name))


def get_attribute(trainer: Trainer, name: str) -> Any:
    holders = _holders(trainer, name)
    if not holders:
        raise AttributeError(f"{name!r} is neither an attribute nor an hparams key of the LightningModule or the "
                             "datamodule; define it there (e.g. self.save_hyperparameters() with that argument)")
    holder, is_mapping = holders[0]
    return holder[name] if is_mapping else getattr(holder, name)


def set_attribute(trainer: Trainer, name: str, value: Any) -> None:
    """Set `name` everywhere it is held, so the module and the datamodule agree."""
    holders = _holders(trainer, name)
    if not holders:
        get_attribute(trainer, name)  # raises the explanation
    for holder, is_mapping in holders:
        if is_mapping:
            holder[name] = value
        else:
            setattr(holder, name, value)
