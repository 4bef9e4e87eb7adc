# Every target creates the virtual environment in .venv and installs the project into it
# when that is missing or older than the package metadata.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: all venv demo test test-all lint typecheck docs unit chaos fuzz bench clean

all: test

$(STAMP): setup.py setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench,docs]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/nexus-writer demo --root demo-data

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The API reference and the guides, as HTML in build/docs; a warning fails the build.
docs: $(STAMP)
	$(BIN)/sphinx-build -E -W --keep-going -q -b html docs build/docs
	@echo "docs: build/docs/index.html"

# The suite under coverage: this process, its greenlets and threads, and the Python
# processes it starts (setup.cfg [coverage:run]); the run fails below COVERAGE_FLOOR percent.
# COVERAGE=no runs the suite without it (about 1.8 times faster).
# PyTango warns, in every process, that it traces its devices' methods for coverage.
COVERAGE       ?= yes
COVERAGE_FLOOR ?= 90
COVERAGE_ENV   := COVERAGE_FILE=$(CURDIR)/.coverage
unit: $(STAMP)
ifeq ($(COVERAGE),no)
	$(BIN)/pytest
else
	rm -f .coverage .coverage.*
	$(COVERAGE_ENV) PYTHONWARNINGS="ignore:Coverage run detected" $(BIN)/coverage run -m pytest
	$(COVERAGE_ENV) $(BIN)/coverage combine --quiet
	@total=$$($(COVERAGE_ENV) $(BIN)/coverage report --format=total); \
	echo "coverage: $$total% of sync_primitives and nexus_writer (floor $(COVERAGE_FLOOR)%;" \
		"per file: $(BIN)/coverage report)"; \
	$(COVERAGE_ENV) $(BIN)/coverage report --fail-under=$(COVERAGE_FLOOR) > /dev/null || { \
		echo "coverage: below the floor of $(COVERAGE_FLOOR)%"; exit 1; }
endif

test: lint typecheck docs unit

# make test on every Python that setup.cfg allows and this machine has, each in a virtual
# environment of its own (.venv-X.Y); a version that is missing is skipped, saying so.
# mypy checks each one against what pip resolved for it (numpy 2.2 on 3.10, ...). Coverage
# is measured on the first one found; the others run the suite without it.
PYTHONS ?= 3.10 3.11 3.12 3.13
test-all:
	@coverage=$(COVERAGE); for version in $(PYTHONS); do \
		python=$$(scripts/find_python $$version) || { \
			echo "test-all: Python $$version not found: skipped"; continue; }; \
		echo "test-all: Python $$version ($$python), coverage: $$coverage"; \
		$(MAKE) --no-print-directory test PYTHON=$$python VENV=.venv-$$version \
			COVERAGE=$$coverage || exit 1; \
		coverage=no; \
	done

# The long versions of the randomized tests: 500 seeded plans of threads starting, waiting
# and ending around the primitives, 20 seeded trials of each way the writer service can go
# down mid-session, and 5 runs of each writer-pair failover.
chaos: $(STAMP)
	CHAOS_SEEDS=500 CRASH_TRIALS=20 FAILOVER_TRIALS=5 $(BIN)/pytest \
		tests/sync_primitives/test_chaos.py tests/writer/test_crash_matrix.py \
		tests/writer/test_failover.py

# The fuzz test for longer: 8,000 spoilt documents into a running service (~10 minutes).
fuzz: $(STAMP)
	FUZZ_EXAMPLES=8000 $(BIN)/pytest tests/writer/test_fuzz.py

bench: $(STAMP)
	$(BIN)/python -m benchmarks.bench_primitives --write docs/benchmarks.md
	$(BIN)/python -m benchmarks.bench_redis --write docs/benchmarks.md
	$(BIN)/python -m benchmarks.bench_writer --write docs/benchmarks.md
	$(BIN)/python -m benchmarks.bench_durability --write docs/benchmarks.md
	$(BIN)/python -m benchmarks.bench_scheduler --write docs/benchmarks.md
	$(BIN)/python -m benchmarks.bench_device --write docs/benchmarks.md
	$(BIN)/python -m benchmarks.bench_scale --write docs/benchmarks.md

clean:
	rm -rf $(VENV) .venv-3.* build *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis \
		demo-data .coverage .coverage.*
