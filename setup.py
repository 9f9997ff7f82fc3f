"""The metadata is setup.cfg's. This file adds only the `all` extra, built from setup.cfg's extras so that it cannot
drift from them: every extra but `test` (the suite's tools), `bench` (the comparisons with Lightning) and `xla`
(torch_xla pins its own torch, so it never installs beside the others)."""
from configparser import ConfigParser
from pathlib import Path

from setuptools import setup

NOT_IN_ALL = {"test", "bench", "xla"}

config = ConfigParser(interpolation=None)
config.read(Path(__file__).with_name("setup.cfg"), encoding="utf-8")
extras = {name: [line.strip() for line in value.splitlines() if line.strip()]
          for name, value in config["options.extras_require"].items()}
extras["all"] = sorted({requirement for name, requirements in extras.items() if name not in NOT_IN_ALL
                        for requirement in requirements})
# Passing extras_require here makes setuptools skip setup.cfg's section, which is why all of them are passed.
setup(extras_require=extras)
