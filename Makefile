# nixfleet.sops — everything a user or CI runs goes through here.
#   make demo   bootstrap a demo host into a throwaway secrets repo (installs what it needs)
#   make test   the whole test suite (installs what it needs)
#   make ee     the execution environment for AWX / Automation Platform, and rekey.yml run in it
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
# make ee: the base image is debootstrapped and the execution environment built and run with podman.
APT_EE := $(APT_DEMO) podman runc debootstrap
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_COLLECTIONS_PATH := $(COLL_ROOT)
export SOPS_DISABLE_VERSION_CHECK := 1
export PATH := $(BIN):$(PATH)

.PHONY: help deps deps-test venv collection lint sanity ansible-lint unit test demo docs clean bench community-sops ee

help:
	@echo "make demo   - run bootstrap on the built-in demo (throwaway secrets repo + demo host)"
	@echo "make test   - run the whole test suite"
	@echo "make bench  - benchmarks against the sops binary"
	@echo "make ee     - build the execution environment (AWX) and run rekey.yml in it"

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
# The collection's Python is byte-compiled here, as pip does for what it installs: where PYTHONDONTWRITEBYTECODE
# is set (this machine sets it), every Ansible run would otherwise compile ~17,000 lines again (~0.1 s a task).
collection: venv
	@mkdir -p $(dir $(COLL_LINK))
	@ln -sfn ../../.. $(COLL_LINK)
	@$(BIN)/python -m compileall -q plugins

# community.sops for the interop test (tests/interop/test_community_sops.py): extracted from the pinned
# `ansible` wheel on PyPI (54 MB download, 0.4 MB kept in .cache/community-sops), since galaxy may be unreachable.
community-sops: venv
	$(BIN)/python tools/community_sops.py

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

test: deps-test venv collection community-sops lint sanity ansible-lint docs unit

demo: venv collection
	$(BIN)/ansible-playbook playbooks/demo.yml

bench: venv collection
	$(BIN)/python benchmarks/rekey_vs_sops.py

# Execution environment: a debootstrapped base (no registry to pull from), the collection built from
# this tree, ansible-builder on top; then tests/ee runs rekey.yml inside it (minutes, not in `make test`).
EE_IMAGE ?= localhost/nixfleet-ee:latest
ee: venv collection
	$(call apt_install,$(APT_EE))
	ee/build-base.sh
	rm -rf ee/dist && mkdir -p ee/dist
	$(BIN)/ansible-galaxy collection build --output-path ee/dist .
	mv ee/dist/nixfleet-sops-*.tar.gz ee/dist/nixfleet-sops.tar.gz
	start=$$(date +%s); \
	$(BIN)/ansible-builder build -f execution-environment.yml -c ee/context -t $(EE_IMAGE) \
	  --container-runtime podman --extra-build-cli-args='--network host'; \
	echo "ee: built $(EE_IMAGE) in $$(( $$(date +%s) - start ))s," \
	  "$$(( $$(podman image inspect --format '{{ .Size }}' $(EE_IMAGE)) / 1000000 )) MB"
	NIXFLEET_EE_IMAGE=$(EE_IMAGE) $(BIN)/pytest -q -s -m ee tests/ee

clean:
	rm -rf $(VENV) $(COLL_ROOT) demo ee/dist ee/context .cache
