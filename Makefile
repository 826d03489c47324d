# Two entry points a newcomer needs (see README): `make demo` and `make test`.
# Both create the virtualenv, install the package with its test extras and the
# Debian packages the tests and benchmarks use; every step is idempotent.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# prometheus is there for promtool (tests/test_promtool.py lints every /metrics with
# `promtool check metrics`); where systemd runs, its postinst also starts a Prometheus
# server (:9090) and node exporter (:9100): `systemctl disable --now prometheus
# prometheus-node-exporter` if this machine should not run them.
# systemd is there for systemd-analyze (tests/test_systemd_units.py verifies the units).
# libfuse3-dev and pkg-config build the EIO fault injector the disk-fault tests mount
# (tests/reliability/diskfault_inject.c); e2fsprogs makes and repairs their loop disks.
APT_PACKAGES := nginx-light wrk iproute2 procps curl luajit libluajit-5.1-dev libssl-dev \
	chromium ffmpeg prometheus systemd libfuse3-dev pkg-config e2fsprogs
STAMP  := $(VENV)/.installed
BROWSER := tests/browser
BROWSER_STAMP := $(BROWSER)/node_modules/.installed

.PHONY: demo test test-slow lint typecheck bench-serve bench-load system-deps browser-deps venv clean

# browser-deps: the player page serves dash.js from tests/browser/node_modules
demo: venv browser-deps
	$(BIN)/oca demo

test: venv system-deps browser-deps lint typecheck
	$(BIN)/python -m pytest -q

test-slow: venv system-deps
	$(BIN)/python -m pytest -q -m slow

lint: venv
	$(BIN)/ruff check oca fill steering bench tests
	$(BIN)/ruff format --check oca fill steering bench tests

typecheck: venv
	$(BIN)/mypy

bench-serve: venv system-deps
	$(BIN)/oca bench serve

bench-load: venv system-deps
	$(BIN)/oca bench load

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ required"'
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip' 2>/dev/null \
		|| $(MAKE) --no-print-directory apt-install PKGS="python3-venv python3-dev gcc"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

# The real DASH player the browser tests drive (dash.js and playwright-core, pinned by
# the lock file); reinstalled only when the lock file is newer than the last install.
browser-deps: $(BROWSER_STAMP)

$(BROWSER_STAMP): $(BROWSER)/package.json $(BROWSER)/package-lock.json
	@command -v npm >/dev/null 2>&1 || $(MAKE) --no-print-directory apt-install PKGS="nodejs npm"
	cd $(BROWSER) && npm ci --no-audit --no-fund
	@touch $(BROWSER_STAMP)

# Installs only what is missing; needs root (or sudo) only when something is.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then $(MAKE) --no-print-directory apt-install PKGS="$$missing"; fi

apt-install:
	@if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	echo "installing Debian packages:$(PKGS)"; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(PKGS) >/dev/null

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info $(BROWSER)/node_modules
