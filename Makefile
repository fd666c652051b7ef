# Two commands do everything on a fresh Debian machine (as root):
#   make demo   - the main job: a counter scenario on the embedded default (SQLite)
#   make test   - the full test suite (real pcscd + vpcd, SQLite and PostgreSQL)
# `make setup` is their shared, idempotent first step.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-$(shell cat setup.cfg scripts/setup-system.sh | sha1sum | cut -c1-12)

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): setup.cfg scripts/setup-system.sh
	bash scripts/setup-system.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -e '.[pcsc,nfc,server,terminal,pkcs11,test]'
	# simulator/ is not in the product wheel (setup.cfg): this venv imports it from the checkout.
	echo '$(CURDIR)' > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/huma-checkout.pth"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: setup
	$(PY) -m simulator.demo

# The gates (docs/architecture.md): import contracts, ruff's rule set (pyproject.toml), mypy.
LINTED := cardlib terminal server firmware_config huma simulator

lint: setup
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/mypy $(LINTED)

test: setup lint
	$(VENV)/bin/pytest

bench: setup
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
