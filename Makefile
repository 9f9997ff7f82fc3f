# Two commands do all the set-up on a fresh machine:
#   make train   trains the digits classifier on 2 CPU processes
#   make test    runs the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python

# DeepSpeed (the deepspeed extra, for its tests) is an sdist that builds against the installed torch, hence no build
# isolation; its C++ ops are JIT-built on first use with ninja (a dependency) and the system C++ compiler.
$(VENV)/.installed: setup.cfg setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q deepspeed==0.19.8 --no-build-isolation
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

train: $(VENV)/.installed
	$(VENV)/bin/fabric run --devices 2 examples/fabric/image_classifier.py

# ruff (ruff.toml) and strict mypy (setup.cfg) over fabric_kit; `make test` runs them first.
lint: $(VENV)/.installed
	$(PY) -m ruff check fabric_kit loops tests benchmarks examples
	$(PY) -m mypy fabric_kit loops

# The suite starts some hundreds of Python processes that import fabric_kit and loops: their bytecode is compiled
# once here, since an environment with PYTHONDONTWRITEBYTECODE set would have each process compile every module.
test: $(VENV)/.installed lint
	$(PY) -m compileall -q fabric_kit loops
	$(PY) -m pytest -q tests

# Every benchmark; rewrites benchmarks/README.md, benchmarks/overhead.png and the tables in README.md (about 20
# minutes on 2 CPU cores; the checkpoint comparison's 10 + 15 rounds take half of it).
bench: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/run_all.py

.PHONY: install train lint test bench

# Optional XLA lane: torch_xla 2.9.0 pins torch==2.9.0 exactly (about 7 GB),
# so it gets its own venv and runs the single-device tests on the CPU PJRT device.
XLA_VENV ?= .venv-xla
XLA_PY := $(XLA_VENV)/bin/python

$(XLA_VENV)/.installed: setup.cfg setup.py
	python3 -m venv $(XLA_VENV)
	$(XLA_PY) -m pip install -q --upgrade pip
	$(XLA_PY) -m pip install -q torch==2.9.0 torch_xla==2.9.0 pytest hypothesis numpy zlib-ng pyyaml
	$(XLA_PY) -m pip install -q -e . --no-deps
	touch $@

test-xla: $(XLA_VENV)/.installed
	PJRT_DEVICE=CPU $(XLA_PY) -m pytest -q tests/xla

.PHONY: test-xla
