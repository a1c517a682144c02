# Ferry: `make run` installs what is missing, builds and serves; `make test` runs every test.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
DATA_DIR ?= $(HOME)/.local/share/ferry
CARGO ?= cargo

.PHONY: setup build run test
setup: $(VENV)/.stamp

$(VENV)/.stamp: requirements-dev.txt
	bash tools/setup.sh
	touch $@

build: setup
	$(CARGO) build --release --workspace

run: build
	./target/release/ferry images prepare --data-dir $(DATA_DIR)
	./target/release/ferry serve --data-dir $(DATA_DIR)

test: build
	bash tools/test.sh

-include mk/*.mk
