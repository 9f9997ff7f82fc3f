# Two commands do all the set-up on a fresh machine:
#   make train   trains the digits classifier on 2 CPU processes
#   make test    runs the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: setup.cfg setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

train: $(VENV)/.installed
	$(VENV)/bin/fabric run --devices 2 examples/fabric/image_classifier.py

test: $(VENV)/.installed
	$(PY) -m pytest -q -x tests

.PHONY: install train test
