# Two commands for a fresh machine with Python 3.11+ and make:
#   make demo   - create .venv, install, register the bundled sample pair
#   make test   - create .venv if needed, run the whole test suite, then the Slicer-release stacks below
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Numba keeps its compiled kernels here, so the compile cost is paid once per checkout.
export NUMBA_CACHE_DIR ?= $(CURDIR)/.numba_cache

# Each 3D Slicer release's Python stack: the Python, numpy, scipy and SimpleITK the release bundles
# (numba and the test extras as pip picks them next to those pins). `make test` runs the Slicer-module
# tests (Testing/test_slicer_*.py) and the fast library subset (pytest marker `stack`) in one venv per
# release, with ONECLICK_SLICER_RELEASE naming the release, so the tests import that release's real
# Slicer Python layer from ../shared/slicer-python/v<release>. The interpreter comes from pyenv; set
# SLICER_PYTHON_<stack>=/path/to/python to use another, a stack without one is skipped with a message.
PYENV ?= pyenv
SLICER_LAYERS := $(abspath $(CURDIR)/../shared/slicer-python)
SLICER_STACKS := 5.6 5.10
SLICER_RELEASE_5.6 := 5.6.2
SLICER_PYTHON_VERSION_5.6 := 3.9
SLICER_PINS_5.6 := numpy==1.26.1 scipy==1.11.3 SimpleITK==2.2.1
SLICER_RELEASE_5.10 := 5.10.0
SLICER_PYTHON_VERSION_5.10 := 3.12
SLICER_PINS_5.10 := numpy==2.0.2 scipy==1.13.1 SimpleITK==2.5.2
slicer_python = $(or $(SLICER_PYTHON_$(1)),$(shell p=$$($(PYENV) prefix $(SLICER_PYTHON_VERSION_$(1)) 2>/dev/null) && echo "$$p/bin/python"))
SLICER_STAMPS := $(foreach stack,$(SLICER_STACKS),.venv-slicer-$(stack)/.installed)
SLICER_TESTS := $(addprefix test-slicer-,$(SLICER_STACKS))

# Prints a stack venv's versions and fails if a pinned one is not what the release bundles.
define SLICER_STACK_REPORT
import importlib.metadata as metadata, sys
label, pins = sys.argv[1], dict(pin.split("==") for pin in sys.argv[3:])
installed = {name: metadata.version(name) for name in ("numpy", "scipy", "SimpleITK", "numba", "vtk")}
print(f"{label}: Python {sys.version.split()[0]}, " + ", ".join(f"{n} {v}" for n, v in installed.items()))
wrong = [f"{n} {installed[n]} instead of {v}" for n, v in pins.items() if installed[n] != v]
if wrong:
    sys.exit(f"{label}: {', '.join(wrong)}; rebuild the venv: rm -rf {sys.argv[2]}")
endef
export SLICER_STACK_REPORT

.PHONY: demo screenshot test bench clean venv test-slicer $(SLICER_TESTS) $(addprefix run-slicer-,$(SLICER_STACKS))

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,batch]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m OneClickRegistrationLib.demo --output demo_output

# The Extensions Index screenshot: the bundled T2, moved by the demo's known motion, registered back to the T1.
screenshot: $(STAMP)
	$(BIN)/python -m OneClickRegistrationLib.pictures --screenshot Resources/Screenshots/OneClickRegistration.png

test: $(STAMP)
	$(BIN)/python -m pytest -q Testing
	@$(MAKE) --no-print-directory test-slicer

# Only the Slicer-release stacks, one after the other; each runs even if another failed.
test-slicer:
	@$(MAKE) --no-print-directory --keep-going $(SLICER_TESTS)

$(SLICER_TESTS): test-slicer-%:
	@if [ -x "$(call slicer_python,$*)" ]; then \
	    [ "$$(cat .venv-slicer-$*/.installed 2>/dev/null)" = "$(SLICER_PINS_$*)" ] || rm -f .venv-slicer-$*/.installed; \
	    $(MAKE) --no-print-directory run-slicer-$*; \
	else \
	    echo "Skipping the Slicer $(SLICER_RELEASE_$*) stack: no Python $(SLICER_PYTHON_VERSION_$*) (neither SLICER_PYTHON_$* nor '$(PYENV) prefix $(SLICER_PYTHON_VERSION_$*)' names one; install it with pyenv or set SLICER_PYTHON_$*=/path/to/python$(SLICER_PYTHON_VERSION_$*))"; \
	fi

# The stack's venv: its Python, the release's numpy/scipy/SimpleITK pinned by a constraints file (so numba
# or vtk cannot pull in another numpy), and this project installed editable with its test extras.
$(SLICER_STAMPS): .venv-slicer-%/.installed: pyproject.toml
	"$(call slicer_python,$*)" -m venv .venv-slicer-$*
	.venv-slicer-$*/bin/python -m pip install --quiet --upgrade pip
	printf '%s\n' $(SLICER_PINS_$*) > .venv-slicer-$*/constraints.txt
	.venv-slicer-$*/bin/python -m pip install --quiet -c .venv-slicer-$*/constraints.txt $(SLICER_PINS_$*) -e ".[test]"
	echo "$(SLICER_PINS_$*)" > $@

$(addprefix run-slicer-,$(SLICER_STACKS)): run-slicer-%: .venv-slicer-%/.installed
	@.venv-slicer-$*/bin/python -c "$$SLICER_STACK_REPORT" "Slicer $(SLICER_RELEASE_$*) stack" .venv-slicer-$* $(SLICER_PINS_$*)
	@if [ -d "$(SLICER_LAYERS)/v$(SLICER_RELEASE_$*)" ]; then echo "Slicer Python layer: $(SLICER_LAYERS)/v$(SLICER_RELEASE_$*)"; \
	else echo "Slicer Python layer $(SLICER_LAYERS)/v$(SLICER_RELEASE_$*) not found"; fi
	@status=0; export ONECLICK_SLICER_RELEASE=$(SLICER_RELEASE_$*) NUMBA_CACHE_DIR="$(CURDIR)/.venv-slicer-$*/numba_cache"; \
	for selection in "Testing/test_slicer_*.py" "-m stack Testing"; do \
	    echo "ONECLICK_SLICER_RELEASE=$$ONECLICK_SLICER_RELEASE .venv-slicer-$*/bin/python -m pytest -q $$selection"; \
	    .venv-slicer-$*/bin/python -m pytest -q -o cache_dir=.venv-slicer-$*/pytest_cache $$selection || status=1; \
	done; \
	if [ $$status -ne 0 ]; then echo "Slicer $(SLICER_RELEASE_$*) stack: tests failed"; fi; \
	exit $$status

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[bench]" || echo "some benchmark peers could not be installed; they will be reported as missing"
	$(BIN)/python -m benchmarks.run --output bench_output

clean:
	rm -rf $(VENV) $(foreach stack,$(SLICER_STACKS),.venv-slicer-$(stack)) demo_output bench_output .numba_cache
