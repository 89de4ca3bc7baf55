# The two commands of the README: `make run` (the realistic synthetic organisation, end to end) and `make test`.
# Each one creates the virtual environment and installs the project on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= out
SEED ?= 42

.PHONY: help run test lint compile bench constraints clean dashboard screenshot bridge-source

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /  make \1\t/'

# The dashboard's browser test drives the system's Chromium (never a browser Playwright downloads): installed with
# apt where this runs as root on Debian/Ubuntu; elsewhere install chromium yourself or set FINOPS_CHROMIUM.
CHROMIUM ?= /usr/bin/chromium

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "no $(CHROMIUM): install chromium (Debian: apt-get install chromium) for the browser test"; fi

$(BIN)/finops-ml: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'  # the versions the suite passed with
	touch $(BIN)/finops-ml

run: $(BIN)/finops-ml  ## the synthetic organisation end to end: out/report.html (the dashboard), out/summary.json, out/value.json
	$(BIN)/finops-ml run --seed $(SEED) --out $(OUT)

test: $(BIN)/finops-ml $(CHROMIUM)  ## the whole test suite (what CI runs after lint), the dashboard's browser test too
	$(BIN)/pytest -q

lint: $(BIN)/finops-ml  ## ruff
	$(BIN)/ruff check .

compile: $(BIN)/finops-ml  ## the pipeline YAML for Vertex AI Pipelines
	$(BIN)/finops-ml compile --output $(OUT)/training_pipeline.yaml

bench: $(BIN)/finops-ml  ## seconds per pipeline step
	$(BIN)/python -m benchmarks.pipeline_timings

bridge-source: $(BIN)/finops-ml  ## the Cloud Run bridge's source in $(OUT)/bridge-source (docs/bridge.md)
	rm -rf $(OUT)/bridge-source && mkdir -p $(OUT)/bridge-source/wheels
	$(BIN)/pip wheel --quiet --no-deps --no-build-isolation -w $(OUT)/bridge-source/wheels .
	cp deploy/bridge/main.py constraints.txt $(OUT)/bridge-source/
	cd $(OUT)/bridge-source && printf -- '-c constraints.txt\n%s[bridge]\n' ./wheels/*.whl > requirements.txt

# Pin the Docker images to the versions of this environment (run it after the tests pass here, on Linux).
constraints: $(BIN)/finops-ml  ## refresh constraints.txt from this environment
	$(BIN)/python deploy/constraints.py constraints.txt

dashboard: $(BIN)/finops-ml  ## serve the last run's dashboard on http://127.0.0.1:8050/
	$(BIN)/finops-ml dashboard --out $(OUT)

screenshot: $(BIN)/finops-ml $(CHROMIUM)  ## regenerate docs/img/dashboard.png from out/report.html
	$(BIN)/python docs/screenshot.py $(OUT)/report.html docs/img/dashboard.png

clean:  ## remove the run's outputs
	rm -rf $(OUT) .pytest_cache
