# Two commands do everything on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-k upstream -x"`.
PYTEST_ARGS ?=

.PHONY: serve test lint bench conformance clean system-test-deps

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e '.[test]'
	touch $(VENV)/.installed $@

serve: $(VENV)/.installed
	$(BIN)/modmesh serve $(SERVE_ARGS)

# The dashboard test drives Debian's headless Chromium: install it where we can (root
# with apt-get, as in CI); elsewhere that one test is skipped and says why.
system-test-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get -o DPkg::Lock::Timeout=120 update -qq && \
	    apt-get -o DPkg::Lock::Timeout=120 install -y -qq chromium >/dev/null || \
	    echo "could not install chromium: the dashboard browser test will be skipped"; \
	  else echo "no chromium (needs root and apt-get): the dashboard browser test will be skipped"; fi; }

# The suite includes the linters (tests/test_lint.py: what `make lint` runs).
test: $(VENV)/.installed-test system-test-deps
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The same checks the suite runs (tests/test_lint.py), on their own and quicker.
lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(VENV)/.installed-test
	$(BIN)/python bench/run_all.py

# Every script of Go's own cmd/go tests, directly and through a node (about 20 minutes);
# `make test` runs the ones that use a module proxy (tests/test_conformance.py).
conformance: $(VENV)/.installed-test
	$(BIN)/python -m tests.conformance.harness --every

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .cache
