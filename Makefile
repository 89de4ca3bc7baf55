# The two commands of the README: `make run` (the demo, end to end) and `make test`.
# Each one creates the virtual environment and installs the project on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= out
SEED ?= 42

.PHONY: help run test lint compile bench constraints clean

help:  ## this list
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z]+):.*## /  make \1\t/'

$(BIN)/finops-ml: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'  # the versions the suite passed with
	touch $(BIN)/finops-ml

run: $(BIN)/finops-ml  ## the demo end to end: out/report.html, out/summary.json (SEED=42 OUT=out)
	$(BIN)/finops-ml run --seed $(SEED) --out $(OUT)

test: $(BIN)/finops-ml  ## the whole test suite (what CI runs after lint)
	$(BIN)/pytest -q

lint: $(BIN)/finops-ml  ## ruff
	$(BIN)/ruff check .

compile: $(BIN)/finops-ml  ## the pipeline YAML for Vertex AI Pipelines
	$(BIN)/finops-ml compile --output $(OUT)/training_pipeline.yaml

bench: $(BIN)/finops-ml  ## seconds per pipeline step
	$(BIN)/python -m benchmarks.pipeline_timings

# Pin the Docker images to the versions of this environment (run it after the tests pass here, on Linux).
constraints: $(BIN)/finops-ml  ## refresh constraints.txt from this environment
	$(BIN)/python deploy/constraints.py constraints.txt

clean:  ## remove the demo's outputs
	rm -rf $(OUT) .pytest_cache
