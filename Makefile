# The README's two commands: `make demo` (the main job) and `make test` (the test suite).
PYTHON ?= python3

.PHONY: install demo test lint
install:
	$(PYTHON) -m pip install -q -e '.[dev]'

demo: install
	smartmixed train --dataset digits --arch 64,32 --method smartmixed --epochs 40 \
		--transition-epoch 15 --seeds 0,1,2 --out runs/demo

test: install
	bash tools/ensure-chromium.sh
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest

lint:
	$(PYTHON) -m ruff check .
