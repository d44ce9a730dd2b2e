# INCISIVE Lab: `make demo` and `make test` work on a fresh machine.
# Each creates .venv if missing and installs what it needs (Python packages from
# PyPI; Debian packages with apt-get when running as root, otherwise the exact
# apt-get line is printed).

SHELL   := /bin/bash
PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEBS    := tesseract-ocr tesseract-ocr-eng postgresql orthanc orthanc-dicomweb bubblewrap chromium
PYTEST_ARGS ?=
IDP_STAMP := hub/idp/node_modules/.installed
PROXY_STAMP := hub/proxy/node_modules/.installed

.PHONY: all install system-deps test lint demo bench clean

all: test

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test,dev,bench,workbench,fl]'
	touch $@

system-deps:
	@.ci/ensure-debs $(DEBS)

# The development identity provider (hub/idp: npm oidc-provider) needs Node.js >= 20 and npm.
$(IDP_STAMP): hub/idp/package.json hub/idp/package-lock.json
	@if ! node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' 2>/dev/null \
	    || ! command -v npm >/dev/null; then \
	  echo "missing Node.js >= 20 with npm (Debian 12's own nodejs is 18: use NodeSource's 20+)" >&2; \
	  echo "run:  sudo apt-get install -y --no-install-recommends nodejs npm" >&2; exit 1; fi
	npm ci --prefix hub/idp --no-audit --no-fund
	touch $@

# JupyterHub's proxy (npm configurable-http-proxy), pinned in hub/proxy/package-lock.json.
$(PROXY_STAMP): hub/proxy/package.json hub/proxy/package-lock.json | $(IDP_STAMP)
	npm ci --prefix hub/proxy --no-audit --no-fund
	touch $@

install: $(STAMP) system-deps $(IDP_STAMP) $(PROXY_STAMP)

lint: install
	$(BIN)/ruff check incisive_lab hub kernels extensions tests bench
	$(BIN)/mypy

# pytest exit code 5 means "no tests collected": that is a broken suite, not a pass.
test: install lint
	@set +e; $(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; \
	exit $$rc

demo: install
	$(BIN)/incisive-lab demo

bench: install
	$(BIN)/python bench/run.py

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
