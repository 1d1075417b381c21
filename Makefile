# Every target sets up .venv by itself on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test test-lane crosscheck bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[test,mpi,plot]'
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(VENV)/bin/minscale demo

# The layer contracts (import-linter) and the lint rules (ruff), then the whole suite, under
# both kernel backends where it matters (see tests/conftest.py). PyTorch cross-checks skip
# here; `make crosscheck` installs torch and runs them.
test: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/ruff check minscale tests benchmarks
	$(PY) -m pytest -q

# The exactness-sensitive tests again, with NumPy's SIMD dispatch switched off (every
# dispatched CPU feature this machine has) and Numba compiling for a generic CPU: a test that
# holds only with one CPU's vector code fails here on every machine, not on some.
NPY_DISPATCHED = $(shell $(PY) -c "import numpy as np; u = (getattr(np, '_core', None) or np.core)._multiarray_umath; print(' '.join(k for k in u.__cpu_dispatch__ if u.__cpu_features__.get(k)))")

test-lane: $(STAMP)
	@echo "test-lane: NPY_DISABLE_CPU_FEATURES='$(NPY_DISPATCHED)' NUMBA_CPU_NAME=generic"
	NPY_DISABLE_CPU_FEATURES="$(NPY_DISPATCHED)" NUMBA_CPU_NAME=generic \
		$(PY) -m pytest -q -m exactness

crosscheck: $(STAMP)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet torch==2.13.0
	@$(MAKE) --no-print-directory arm-tools
	$(PY) -m pytest -q -m crosscheck

# crosscheck also runs the exported C on a 32-bit ARM target (qemu-arm) and builds it for a
# Cortex-M4: the Debian packages are installed when missing and possible (root with apt-get,
# as in CI); otherwise one line says so and those tests skip while the rest runs.
ARM_PACKAGES := gcc-arm-linux-gnueabihf qemu-user gcc-arm-none-eabi

.PHONY: arm-tools
arm-tools:
	@if command -v arm-linux-gnueabihf-gcc >/dev/null && command -v qemu-arm >/dev/null \
	    && command -v arm-none-eabi-gcc >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	        $(ARM_PACKAGES) >/dev/null) \
	    || echo "crosscheck: could not install $(ARM_PACKAGES); the ARM checks will skip"; \
	else \
	    echo "crosscheck: $(ARM_PACKAGES) missing and not installable here (needs root and apt-get); the ARM checks will skip"; \
	fi

bench: $(STAMP)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet torch==2.13.0
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
