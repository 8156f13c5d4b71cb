# nixfleet.sops — everything a user or CI runs goes through here.
#   make demo   bootstrap a demo host into a throwaway secrets repo (installs what it needs)
#   make test   the whole test suite (installs what it needs)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
COLL_ROOT := $(CURDIR)/.collections
COLL_LINK := $(COLL_ROOT)/ansible_collections/nixfleet/sops
# What the demo needs, and what the tests need on top (oracles, ssh, podman for molecule).
APT_DEMO := git python3-venv
# gnupg: a throwaway PGP key beside age in interop tests; chromium and zbar-tools: the break-glass paper
# page rendered headless and its QR code read back. shellcheck: the shellcheck test of ansible-test sanity.
APT_TEST := $(APT_DEMO) age gnupg openssh-client podman runc debootstrap uidmap chromium zbar-tools shellcheck
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_COLLECTIONS_PATH := $(COLL_ROOT)
export SOPS_DISABLE_VERSION_CHECK := 1
export PATH := $(BIN):$(PATH)

.PHONY: help deps deps-test venv collection lint sanity ansible-lint unit test demo docs clean bench

help:
	@echo "make demo   - run bootstrap on the built-in demo (throwaway secrets repo + demo host)"
	@echo "make test   - run the whole test suite"
	@echo "make bench  - benchmarks against the sops binary"

# System packages (Debian). Only installs what is missing; needs root or sudo.
define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null; \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing </dev/null; \
	fi
endef

deps:
	$(call apt_install,$(APT_DEMO))

deps-test:
	$(call apt_install,$(APT_TEST))

$(BIN)/.stamp: requirements.txt requirements-dev.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install python3 (3.11) first"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

venv: deps $(BIN)/.stamp

# Make the repository importable in place as nixfleet.sops.
collection:
	@mkdir -p $(dir $(COLL_LINK))
	@ln -sfn ../../.. $(COLL_LINK)

lint: venv collection
	$(BIN)/ruff check plugins tests benchmarks tools
	$(BIN)/python tools/shape.py plugins/module_utils

# ansible-test sanity, the tests that run offline (validate-modules, import, pylint, pep8, ...), on a copy of
# the tree under ansible_collections/nixfleet/sops; tests/sanity/ignore-2.X.txt says why each exception is one.
sanity: venv collection
	tests/sanity/run.sh

# ansible-lint --profile production (.ansible-lint) over playbooks, roles, molecule and the rest of the tree.
ansible-lint: venv collection
	$(BIN)/ansible-lint --offline

docs: venv collection
	@for m in $$(ls plugins/modules/*.py | xargs -n1 basename | sed 's/\.py$$//'); do \
	  $(BIN)/ansible-doc -t module nixfleet.sops.$$m >/dev/null || { echo "ansible-doc failed for $$m"; exit 1; }; done
	@for t in filter lookup; do for f in $$(ls plugins/$$t/*.py | xargs grep -l "^DOCUMENTATION" | xargs -n1 basename | sed 's/\.py$$//'); do \
	  $(BIN)/ansible-doc -t $$t nixfleet.sops.$$f >/dev/null || { echo "ansible-doc failed for $$t $$f"; exit 1; }; done; done
	@for r in $$(ls roles); do \
	  $(BIN)/ansible-doc -t role nixfleet.sops.$$r >/dev/null || { echo "ansible-doc failed for role $$r"; exit 1; }; done
	@echo "ansible-doc renders every module, filter, lookup and role"

unit: venv collection
	$(BIN)/pytest -q tests

test: deps-test venv collection lint sanity ansible-lint docs unit

demo: venv collection
	$(BIN)/ansible-playbook playbooks/demo.yml

bench: venv collection
	$(BIN)/python benchmarks/rekey_vs_sops.py

clean:
	rm -rf $(VENV) $(COLL_ROOT) demo
