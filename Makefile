# Fleetweb: `make run` (local stack, the demo) and `make test` (the whole suite) set themselves up.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.stamp

# command -> Debian package that provides it (an absolute path instead of a command: a file
# that package installs, for packages without a command)
SYSTEM_DEPS := \
	redis-server:redis-server \
	etcd:etcd-server \
	etcdctl:etcd-client \
	mkfs.ext4:e2fsprogs \
	mkfs.vfat:dosfstools \
	mcopy:mtools \
	sfdisk:fdisk \
	mksquashfs:squashfs-tools \
	qemu-img:qemu-utils \
	qemu-system-x86_64:qemu-system-x86 \
	/usr/share/OVMF/OVMF_CODE.fd:ovmf \
	/usr/lib/systemd/boot/efi/systemd-bootx64.efi:systemd-boot-efi \
	chromium:chromium

.PHONY: help deps system-deps run demo-update test bench lint clean distclean

help:
	@echo "make run    - full local stack (web, worker, beat, Redis, etcd, 3 simulated hosts)"
	@echo "make test   - the whole test suite (starts its own Redis/etcd when needed)"
	@echo "make deps   - Debian tools + .venv (idempotent)"
	@echo "make bench  - benchmarks: bench/*.py (BENCH=fanin BENCH_ARGS='--sizes 100')"
	@echo "make lint   - ruff"
	@echo "make clean  - stop recorded services, remove caches and runtime files (keeps the DB)"
	@echo "make distclean - clean + remove var/ and .venv"

deps: system-deps $(STAMP)

# apt-get only for commands that are missing; `apt-get update` only then.
system-deps:
	@missing=""; \
	for pair in $(SYSTEM_DEPS); do \
		cmd=$${pair%%:*}; pkg=$${pair##*:}; \
		case $$cmd in /*) [ -e $$cmd ] || missing="$$missing $$pkg"; continue ;; esac; \
		command -v $$cmd >/dev/null 2>&1 || [ -x /usr/sbin/$$cmd ] || [ -x /sbin/$$cmd ] || missing="$$missing $$pkg"; \
	done; \
	if command -v dpkg-query >/dev/null 2>&1; then \
		dpkg-query -W -f='$${Status}' python3-venv 2>/dev/null | grep -q 'ok installed' || missing="$$missing python3-venv"; \
	else \
		$(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	fi; \
	if [ -n "$$missing" ]; then \
		echo "deps: installing Debian packages:$$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt pyproject.toml | $(PY)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $@

# RUN_ARGS: scripts/devstack.py options (--hosts N, --free-ports, ...); FLEET_WEB_PROCESSES (2) web processes.
RUN_ARGS ?=
run: deps
	$(PY) scripts/devstack.py $(RUN_ARGS)

# Demo scenarios against a running `make run` (SCENARIO=good|bad-payload|bad-boot).
SCENARIO ?= good
demo-update:
	@test -f var/demo/env.sh || { echo "start the stack first: make run"; exit 1; }
	. var/demo/env.sh && $(PY) manage.py demo_update $(SCENARIO)

test: deps
	scripts/test.sh

# BENCH=fanin selects scripts; BENCH_ARGS="--sizes 100,1000" is passed to each.
bench: deps
	scripts/bench.sh $(BENCH_ARGS)

lint: deps
	$(VENV)/bin/ruff check .

clean:
	-@[ -x $(PY) ] && $(PY) scripts/services.py stop --tag dev >/dev/null 2>&1 || true
	rm -rf .pytest_cache .ruff_cache build var/run var/log var/tmp
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf var $(VENV) *.egg-info
