# The README's two commands: `make demo` (the main job) and `make test` (the test suite).
PYTHON ?= python3

.PHONY: install demo test test-slow lint
# constraints-dev.txt pins the test and lint tools (how to update them: see that file).
install:
	$(PYTHON) -m pip install -q -e '.[dev]' -c constraints-dev.txt

# The demo keeps its MLflow store, Ray results and report under runs/demo (reset each time).
DEMO := runs/demo
demo: install
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	smartmixed sweep run sweeps/presets/quick.yaml --tracking-uri sqlite:///$(DEMO)/mlflow.db \
		--set storage_path=$(DEMO)/ray_results
	smartmixed analyze --experiment smartmixed-quick --sweep quick-digits \
		--tracking-uri sqlite:///$(DEMO)/mlflow.db --out $(DEMO)/report
	@echo "Report: $(DEMO)/report/index.html   MLflow UI: mlflow ui --backend-store-uri sqlite:///$(DEMO)/mlflow.db (then the link above)"
	@echo "Status: smartmixed sweep status quick-digits --tracking-uri sqlite:///$(DEMO)/mlflow.db"

test: install
	bash tools/ensure-chromium.sh
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -m "not slow"

# Multi-process tests (CI runs them after `make test`): two-node Ray cluster, killed worker,
# interrupted and killed driver + resume, MLflow server outage, NaN trial, smoke sweep then
# analysis, MLflow server on PostgreSQL (tools/ensure-postgres.sh installs it) restarted with
# its database mid-sweep (about 10-15 minutes on 2 cores).
test-slow: install
	bash tools/ensure-postgres.sh
	$(PYTHON) -m pytest -m slow

lint:
	$(PYTHON) -m ruff check .
