"""The signal a Tuner's finder raises when its search is done: `fit` then ends without training."""


class TunerExit(Exception):
    """Raised from `on_fit_start` by a finder that `Tuner` added; the Trainer ends `fit` quietly on it."""
