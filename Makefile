# txregistry: `make run` starts the registry on tcp:5000 with filesystem storage in
# ./registry-data; `make test` runs the whole test suite.  Both set up .venv themselves.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv run test lint bench tools bench-tools install-missing clean

# An editable install in setuptools' "compat" mode puts this checkout on the venv's sys.path
# (a .pth file).  Twisted finds `twistd` plugins by scanning twisted/plugins under every
# sys.path entry, so .venv/bin/twistd finds twisted/plugins/registry_plugin.py here without
# PYTHONPATH.  (The default editable mode maps packages through an import hook instead, which
# Twisted's plugin scan never sees; a regular install copies the plugin into site-packages.)
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,s3,http2]' --config-settings editable_mode=compat
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/twistd --nodaemon --pidfile= registry --config tap.cfg

# System tools the interoperability tests drive (skopeo, registry:2 from Debian's
# docker-registry package); installed when missing and we are allowed to.
TOOLS := skopeo docker-registry curl
BENCH_TOOLS := $(TOOLS) wrk hey

tools:
	@$(MAKE) --no-print-directory install-missing WANTED="$(TOOLS)"

bench-tools:
	@$(MAKE) --no-print-directory install-missing WANTED="$(BENCH_TOOLS)"

install-missing:
	@missing=""; \
	for tool in $(WANTED); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "missing system tools:$$missing (tests needing them will skip; CI installs them)"; \
	  fi; \
	fi

test: $(STAMP) tools
	PYTHONPATH=$(CURDIR) $(BIN)/python -m pytest -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check registry tests bench twisted
	$(BIN)/ruff format --check registry tests bench twisted
	$(BIN)/mypy

bench: $(STAMP) bench-tools
	PYTHONPATH=$(CURDIR) $(BIN)/python bench/run.py
	PYTHONPATH=$(CURDIR) $(BIN)/python bench/s3.py

clean:
	rm -rf $(VENV) registry-data
