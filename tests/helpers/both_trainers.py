"""For tests that run one small program on Lightning 2.6 and on loops (`@both`, the module as `L`) and compare.
Importing this skips the test module when lightning is not installed."""
import logging
import warnings
from collections.abc import Iterator

import pytest

import loops

pl = pytest.importorskip("lightning.pytorch")
both = pytest.mark.parametrize("L", [pl, loops], ids=["lightning", "loops"])

QUIET = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
             enable_model_summary=False)


@pytest.fixture
def quiet() -> Iterator[None]:
    """Neither Trainer's info logs nor warnings: the tests compare results, not messages."""
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
