# Two commands do everything: `make train` and `make test`. Each creates .venv with pip when it
# is missing (pip, not uv/poetry: pip takes torch from the wheels configured for this machine).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.glcan-installed

.PHONY: train test test-fast bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

train: $(STAMP)  ## the default comparison on the embedded data
	$(PY) train.py

test: $(STAMP)  ## every test, slow ones included (what CI runs)
	WANDB_MODE=offline $(PY) -m pytest -q

test-fast: $(STAMP)  ## the default development suite (< 5 min on 2 cores)
	WANDB_MODE=offline $(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) bench/memory.py

clean:
	rm -rf runs .pytest_cache
