# agentsh — two entry points: `make run` (the main job) and `make test` (every gate).
# Both set up what they need, idempotently: Debian packages, a .venv, the static shim.

SHELL := /bin/bash
BOOT_PY ?= $(shell command -v python3.11 || command -v python3)
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
APT_PKGS := gcc libc6-dev musl-tools mandoc util-linux iproute2 libfuse3-dev fuse3 pkg-config
SRC := $(shell find shell enforce install policies -type f \( -name '*.py' -o -name '*.yaml' -o -name '*.sh' \) 2>/dev/null) pyproject.toml
SHIM := build/agentsh-shell-shim
BOUNDARY := build/libagentsh-boundary.so
PYTEST_ARGS ?=

.PHONY: run test setup apt lint typecheck manlint unit e2e bench clean

run: setup
	$(PY) -m agentsh.install.demo

test: setup lint typecheck manlint
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

setup: apt $(VENV)/.installed $(SHIM) $(BOUNDARY)

apt:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(VENV)/.deps: pyproject.toml
	test -x $(PY) || $(BOOT_PY) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools
	$(PY) -m pip install -q "bashlex==0.18" "tree-sitter>=0.23" "tree-sitter-bash>=0.23" pyyaml psutil \
	    prompt-toolkit pytest pytest-timeout pexpect ruff mypy types-pyyaml types-psutil pyfuse3
	touch $@

# A regular (non-editable) install: the frontend starts with `python -I`, so no .pth
# import hooks sit on the hot path of every governed bash.
$(VENV)/.installed: $(VENV)/.deps $(SRC)
	rm -rf build/lib build/bdist.* *.egg-info
	$(PY) -m pip install -q --no-deps --no-build-isolation --force-reinstall .
	rm -rf build/lib build/bdist.* *.egg-info
	$(PY) -m agentsh.shell.parse --warm
	touch $@

# The shim, built static (no dynamic loader the caller's environment could steer) with
# musl-gcc when installed (Debian musl-tools: 47 KB, ~0.2 ms per bash over bash.real; glibc's
# static start-up runs dozens of cpuid, each a VM exit: ~0.45 ms), else gcc; then copied to
# where `agentsh shim install-shell` looks for it: $(VENV)/libexec.
$(SHIM): shim/agentsh-shell-shim.c $(VENV)/.deps
	mkdir -p build
	cc=$$(command -v musl-gcc || echo gcc); echo "building the shim with $$cc"; \
	$$cc -static -Os -Wall -Wextra -Werror -o $@ $<
	install -D -m 0755 $@ $(VENV)/libexec/agentsh-shell-shim

# The exec-boundary hot path of the user-notify supervisor (enforce/boundary.py loads it
# with ctypes from $(VENV)/libexec; without it the supervisor does the same steps in Python).
$(BOUNDARY): shim/agentsh-boundary.c $(VENV)/.deps
	mkdir -p build
	gcc -shared -fPIC -O2 -Wall -Wextra -Werror -o $@ $<
	install -D -m 0755 $@ $(VENV)/libexec/libagentsh-boundary.so

lint: $(VENV)/.deps
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: $(VENV)/.installed
	$(PY) -m mypy -p agentsh.shell -p agentsh.enforce -p agentsh.install

manlint: apt
	@for m in man/*.[0-9]; do mandoc -Tlint -Wwarning "$$m" || exit 1; done

unit: setup
	$(PY) -m pytest -q tests/unit

e2e: setup
	$(PY) -m pytest -q tests/e2e

bench: setup
	$(PY) bench/shim_bench.py

clean:
	rm -rf build $(VENV) *.egg-info
