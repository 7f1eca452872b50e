# The two commands: `make demo` runs the whole pipeline on the embedded default; `make test` runs the tests.
# Both set up everything first (a virtual environment in .venv, a DVC repository).

VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test setup browser clean ui lock lint docs
DVC_REMOTE ?= $(HOME)/.cache/rlhf/dvc-remote

$(BIN)/python:
	python3 -m venv $(VENV)

# Installed under constraints.txt: the versions the tests last passed with, so a fresh machine next
# month gets the same ones. Reinstalled when pyproject.toml or the constraints change.
# pip's per-location warnings on this machine are noise.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]' 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import rlhf, torch, prefect, dvc, trl" && touch $@

# Refresh constraints.txt: the newest releases pyproject.toml allows, resolved in a scratch
# environment (nothing hand-installed in .venv leaks in). Run `make test` after, then commit both.
# Local version labels (torch's +cpu) are dropped: `torch==2.13.0` matches the CPU and CUDA builds.
lock: | $(BIN)/python
	rm -rf .venv-lock && python3 -m venv .venv-lock
	.venv-lock/bin/pip install --quiet -e '.[dev]' 2>&1 | grep -v "is ignored" || true
	{ echo "# Written by \`make lock\` on $$(date -u +%F) (python $$(.venv-lock/bin/python -c 'import platform; print(platform.python_version())')); \`make setup\` installs under it."; \
	  .venv-lock/bin/pip freeze --exclude-editable | sed 's/+[a-z0-9.]*$$//'; } > constraints.txt
	rm -rf .venv-lock
	@echo "constraints.txt: $$(grep -vc '^#' constraints.txt) pinned releases"

setup: $(VENV)/.installed
	@test -d .dvc || $(BIN)/dvc init --quiet
	@$(BIN)/dvc config core.analytics false
	@$(BIN)/dvc remote default >/dev/null 2>&1 || $(BIN)/dvc remote add --local --default local $(DVC_REMOTE)

demo: setup
	$(BIN)/python -m rlhf.flows.pipeline
	@echo "\nReport: reports/eval.md   Store: $(BIN)/rlhf store stats   Curves: $(BIN)/dvc plots show"

# The Prefect UI with the deployments of prefect.yaml and a worker (README: "Operate it").
ui: setup
	$(BIN)/python -m rlhf.flows.ui --port 4200

# The ranking page's tests drive Debian's headless Chromium; installed here when apt-get and root allow.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	  echo "no chromium/chromedriver: the browser tests will be skipped"

test: setup browser
	$(BIN)/python -m pytest -ra

# The formatter and the linter (configured in pyproject.toml): CI runs this before the tests.
# `ruff format .` and `ruff check --fix .` mend what they report.
lint: setup
	$(BIN)/ruff format --check --quiet .
	$(BIN)/ruff check --quiet .

# The docs site: the pages generated from the code and the benches, then a strict build into site/.
docs: setup
	$(BIN)/python tools/generate_docs.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

clean:
	rm -rf data models metrics plots reports feedback.duckdb* dvc.lock
