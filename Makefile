# Two commands do everything: `make train` and `make test`. Each creates .venv with pip when it
# is missing (pip, not uv/poetry: pip takes torch from the wheels configured for this machine).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.glcan-installed

.PHONY: train test test-fast test-claims ci bench grid-cifar10-resnet32 grid-cifar10-resnet110 clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

train: $(STAMP)  ## the default comparison on the embedded data
	$(PY) train.py

# Tests run in two single-threaded pytest workers (pytest-xdist): most of a test's time is Python
# and process start-up, which a second torch thread does not speed up but a second worker does.
PYTEST := OMP_NUM_THREADS=1 WANDB_MODE=offline $(PY) -m pytest -q -n 2

test: $(STAMP)  ## every test, slow ones included, but the accuracy claims (budget: 8 min)
	$(PYTEST) -m "not claim"

test-fast: $(STAMP)  ## the default development suite (budget: 2 min)
	$(PYTEST) -m "not slow and not claim"

test-claims: $(STAMP)  ## the README's accuracy claims, trained at their documented setting
	WANDB_MODE=offline $(PY) -m pytest -q -m claim

ci: test test-claims  ## what CI runs (.ci/run)

bench: $(STAMP)
	$(PY) bench/memory.py

# The papers' grid (InfoPro's CIFAR-10 protocol: 160 epochs; a GPU is expected).
HEADS_GRID = --grid model.method=e2e,local --grid model.num_blocks=4,16 --grid model.head=glcan,linear,dgl,infopro

grid-cifar10-resnet32: $(STAMP)
	$(PY) train.py compare --config configs/cifar10_resnet32_glcan_k4.yaml $(HEADS_GRID) --data.download true \
		--out runs/grid_cifar10_resnet32

grid-cifar10-resnet110: $(STAMP)
	$(PY) train.py compare --config configs/cifar10_resnet110_glcan_k4.yaml $(HEADS_GRID) --data.download true \
		--out runs/grid_cifar10_resnet110

clean:
	rm -rf runs .pytest_cache
