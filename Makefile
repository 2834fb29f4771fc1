# txregistry: `make run` starts the registry on tcp:5000 with filesystem storage in
# ./registry-data; `make test` runs the whole test suite.  Both set up .venv themselves.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv run test lint bench tools bench-tools install-missing try-twisted clean

# The checkout is installed editable, and listed in a .pth file of the venv as well: Twisted
# finds `twistd` plugins by scanning twisted/plugins under each sys.path entry, and an editable
# install maps packages through an import hook that this scan never sees.  With the checkout on
# sys.path, .venv/bin/twistd finds twisted/plugins/registry_plugin.py here, no PYTHONPATH
# needed.  (A regular `pip install .` copies the plugin into site-packages/twisted/plugins.)
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,s3,http2]'
	$(BIN)/python -c 'import sys, sysconfig; open(sysconfig.get_path("purelib") + "/txregistry-checkout.pth", "w").write(sys.argv[1] + "\n")' '$(CURDIR)'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/twistd --nodaemon --pidfile= registry --config tap.cfg

# System tools the interoperability tests drive (skopeo, registry:2 from Debian's
# docker-registry package, nginx for the reverse-proxy example, Chromium for the web UI's
# browser tests, the container engines); installed when missing and we are allowed to.  An
# entry is a command, or COMMAND:PACKAGE when the Debian package is named otherwise.
TOOLS := skopeo docker-registry curl redis-server nginx:nginx-light chromium chromedriver:chromium-driver \
	dockerd:docker.io docker:docker.io podman containerd ctr:containerd
BENCH_TOOLS := $(TOOLS) wrk hey

tools:
	@$(MAKE) --no-print-directory install-missing WANTED="$(TOOLS)"

bench-tools:
	@$(MAKE) --no-print-directory install-missing WANTED="$(BENCH_TOOLS)"

# A policy-rc.d answering 101 keeps the packages' maintainer scripts from starting system
# daemons (docker.io would start dockerd with iptables rules and a bridge); the tests start
# their own.  It is removed again unless it was there before.
install-missing:
	@missing=""; PATH="$$PATH:/usr/sbin:/sbin"; \
	for entry in $(WANTED); do \
	  command -v $${entry%%:*} >/dev/null || case " $$missing " in \
	    *" $${entry#*:} "*) ;; *) missing="$$missing $${entry#*:}";; esac; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    if [ ! -e /usr/sbin/policy-rc.d ]; then \
	      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d; \
	      trap 'rm -f /usr/sbin/policy-rc.d' EXIT; \
	    fi; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "missing system tools:$$missing (tests needing them will skip; CI installs them)"; \
	  fi; \
	fi

# Test files run in TEST_PROCESSES processes at once (pytest-xdist; a file's tests stay in one
# process, in order): most tests spend their time waiting on the servers they start, so on 2
# cores 3 processes finish the suite in about three fifths of the time of one (the longest
# files first: tests/conftest.py).  TEST_PROCESSES=0: all in
# pytest's own process.
TEST_PROCESSES ?= 3

test: $(STAMP) tools
	PYTHONPATH=$(CURDIR) $(BIN)/python -m pytest -p no:cacheprovider -n $(TEST_PROCESSES) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check registry tests bench twisted
	$(BIN)/ruff format --check registry tests bench twisted
	$(BIN)/mypy

bench: $(STAMP) bench-tools
	PYTHONPATH=$(CURDIR) $(BIN)/python bench/run.py
	PYTHONPATH=$(CURDIR) $(BIN)/python bench/s3.py
	PYTHONPATH=$(CURDIR) $(BIN)/python bench/sendfile.py
	PYTHONPATH=$(CURDIR) $(BIN)/python bench/fleet.py

# Another Twisted (by default the newest, past the range pyproject.toml pins) in a scratch
# venv, against the tests of what txregistry takes from Twisted's internals
# (registry/http/twisted_internals.py) and of the fast paths built on them; docs/install.md.
TWISTED ?= twisted[tls,http2]
TRY_VENV := .venv-twisted
TWISTED_TESTS := tests/e2e/test_twisted_internals.py tests/e2e/test_chunked_bodies.py \
	tests/e2e/test_refused_bodies.py tests/e2e/test_sendfile.py tests/auth/test_tls.py \
	tests/proxy/test_fill_integrity.py

try-twisted:
	rm -rf $(TRY_VENV)
	$(PYTHON) -m venv $(TRY_VENV)
	$(TRY_VENV)/bin/pip install --quiet --upgrade pip
	$(TRY_VENV)/bin/pip install --quiet -e '.[test,http2]'
	$(TRY_VENV)/bin/pip install --quiet --upgrade '$(TWISTED)'
	$(TRY_VENV)/bin/python -c 'import twisted; print("trying Twisted", twisted.__version__)'
	PYTHONPATH=$(CURDIR) $(TRY_VENV)/bin/python -m pytest -p no:cacheprovider -q $(TWISTED_TESTS)

clean:
	rm -rf $(VENV) $(TRY_VENV) registry-data
