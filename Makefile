# Two commands for a fresh machine with Python 3.11+ and make:
#   make demo   - create .venv, install, register the bundled sample pair
#   make test   - create .venv if needed, run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Numba keeps its compiled kernels here, so the compile cost is paid once per checkout.
export NUMBA_CACHE_DIR ?= $(CURDIR)/.numba_cache

.PHONY: demo test bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m OneClickRegistrationLib.demo --output demo_output

test: $(STAMP)
	$(BIN)/python -m pytest -q Testing

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[bench]" || echo "some benchmark peers could not be installed; they will be reported as missing"
	$(BIN)/python -m benchmarks.run --output bench_output

clean:
	rm -rf $(VENV) demo_output bench_output .numba_cache
