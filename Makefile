# The two commands: `make demo` runs the whole pipeline on the embedded default; `make test` runs the tests.
# Both set up everything first (a virtual environment in .venv, a DVC repository).

VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test setup browser clean ui
DVC_REMOTE ?= $(HOME)/.cache/rlhf/dvc-remote

$(BIN)/python:
	python3 -m venv $(VENV)

# Reinstalled only when pyproject.toml changes. pip's per-location warnings on this machine are noise.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(BIN)/pip install --quiet -e '.[dev]' 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import rlhf, torch, prefect, dvc, trl" && touch $@

setup: $(VENV)/.installed
	@test -d .dvc || $(BIN)/dvc init --quiet
	@$(BIN)/dvc config core.analytics false
	@$(BIN)/dvc remote default >/dev/null 2>&1 || $(BIN)/dvc remote add --local --default local $(DVC_REMOTE)

demo: setup
	$(BIN)/python -m flows.pipeline
	@echo "\nReport: reports/eval.md   Store: $(BIN)/rlhf store stats   Curves: $(BIN)/dvc plots show"

# The Prefect UI with the deployments of prefect.yaml and a worker (README: "Operate it").
ui: setup
	$(BIN)/python -m flows.ui --port 4200

# The ranking page's tests drive Debian's headless Chromium; installed here when apt-get and root allow.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	  echo "no chromium/chromedriver: the browser tests will be skipped"

test: setup browser
	$(BIN)/python -m pytest -ra

clean:
	rm -rf data models metrics plots reports feedback.duckdb* dvc.lock
