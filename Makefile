# The README's two commands: `make run` and `make test`. Both create .venv and install the project;
# `make run` installs only what the app needs, `make test` adds the test tools (the `dev` extra).
PYTHON ?= python3
VENV ?= .venv
PORT ?= 8501
ADDRESS ?= 127.0.0.1
PY := $(VENV)/bin/python
APP_STAMP := $(VENV)/.app-stamp
DEV_STAMP := $(VENV)/.dev-stamp

.PHONY: install install-dev run test bench worker eval

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "CFO Desk needs Python >= 3.11 (set PYTHON=python3.11)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(APP_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $(APP_STAMP)

$(DEV_STAMP): $(APP_STAMP)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(DEV_STAMP)

install: $(APP_STAMP)

install-dev: $(DEV_STAMP)

run: install
	$(VENV)/bin/streamlit run app.py --server.address $(ADDRESS) --server.port $(PORT)

worker: install
	$(VENV)/bin/cfo-desk worker

test: install-dev
	$(VENV)/bin/pytest -q

# The evaluation suite on the sample workspace: `make eval` uses CFO_DESK_MODEL, `make eval EVAL=--oracle`
# checks the suite itself, `make eval EVAL="--model openai-chat:gpt-4.1 --out reports/gpt"` picks a model.
EVAL ?=
eval: install
	$(VENV)/bin/cfo-desk eval $(EVAL)

bench: install-dev
	$(PY) benchmarks/run.py
