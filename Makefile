# stenoxdp front door. `make help` lists the targets.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: help setup demo test test-unit test-kernel test-netns bench lab-up lab-down clean

help:            ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup:           ## install everything this needs (Debian packages, venv, stenoctl on PATH); idempotent
	@bash scripts/setup.sh

demo: setup      ## the lab: namespaces + veth, real traffic, captured, indexed and queried
	@$(PY) -m stenoxdp.demo

test: setup      ## every test tier (unit, kernel, netns); as root
	@$(PY) -m pytest tests $(PYTEST_ARGS)

test-unit: setup ## pure unit tests only (no root needed after setup)
	@$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-kernel: setup ## BPF load / test-run tests
	@$(PY) -m pytest tests/kernel $(PYTEST_ARGS)

test-netns: setup ## namespaces, veth pairs, real traffic
	@$(PY) -m pytest tests/netns $(PYTEST_ARGS)

bench: setup     ## benchmarks against tcpdump and Stenographer; writes bench/results/
	@$(PY) -m bench.run $(BENCH_ARGS)

lab-up:          ## the Vagrant lab (a Debian 12 VM running make demo and make test)
	cd vagrant && vagrant up

lab-down:        ## destroy the Vagrant lab
	cd vagrant && vagrant destroy -f

clean:           ## remove build products (not the venv)
	rm -rf build .pytest_cache
