# `make bench-sandbox`: Sandbox create-to-first-output and exec round trip through the modal SDK,
# against bubblewrap (and podman, if installed) on the same root filesystem (bench/sandbox/).
.PHONY: bench-sandbox
bench-sandbox:
	$(CARGO) build --release -p ferry
	FERRY_BIN=$(CURDIR)/target/release/ferry PY=$(PY) bash bench/sandbox/run.sh
