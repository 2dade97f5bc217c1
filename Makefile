# Two commands on a fresh machine:  `make demo`  and  `make test`.  Both create and use ./.venv themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU wheel on machines with a local torch wheel; on a CUDA machine the same pin pulls the CUDA build from PyPI.
TORCH ?= torch==2.13.0
EXTRAS ?= dev
PYTEST_ARGS ?=

.PHONY: install demo test lint mutants clean

$(VENV)/.installed-$(EXTRAS): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed-$(EXTRAS)

demo: install
	$(VENV)/bin/dm4isl-train experiment=demo
	@run=$$(ls -td outputs/demo/runs/*/ | head -1); \
	$(VENV)/bin/dm4isl-evaluate input_dir=$${run}predictions output_dir=$${run}evaluation "baselines=[linear]" && \
	echo "demo outputs: $${run}predictions (TIFFs, metrics, preview.png) and $${run}evaluation/report.html"

test: install
	$(PY) -m pytest --durations=25 $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check dm4isl tests scripts

# Mutation testing per module (docs/testing.md): MODULES="uncertainty io" to run some; scores in build/mutation/.
MODULES ?=
mutants:
	$(MAKE) install EXTRAS=ci,mutation
	OMP_NUM_THREADS=1 $(PY) scripts/mutants.py $(MODULES)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build/mutation
