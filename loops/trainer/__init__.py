from loops.trainer.trainer import Trainer

__all__ = ["Trainer"]
