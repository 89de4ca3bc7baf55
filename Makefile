# The two commands of the README: `make run` (the demo, end to end) and `make test`.
# Each one creates the virtual environment and installs the project on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= out
SEED ?= 42

.PHONY: run test lint compile bench constraints clean

$(BIN)/finops-ml: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'  # the versions the suite passed with
	touch $(BIN)/finops-ml

run: $(BIN)/finops-ml
	$(BIN)/finops-ml run --seed $(SEED) --out $(OUT)

test: $(BIN)/finops-ml
	$(BIN)/pytest -q

lint: $(BIN)/finops-ml
	$(BIN)/ruff check .

compile: $(BIN)/finops-ml
	$(BIN)/finops-ml compile --output $(OUT)/training_pipeline.yaml

bench: $(BIN)/finops-ml
	$(BIN)/python benchmarks/pipeline_timings.py

# Pin the Docker images to the versions of this environment (run it after the tests pass here, on Linux).
constraints: $(BIN)/finops-ml
	$(BIN)/python deploy/constraints.py constraints.txt

clean:
	rm -rf $(OUT) .pytest_cache
