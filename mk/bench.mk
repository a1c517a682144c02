# Benchmarks against a baseline run side by side (bench/). `make bench-objects` compares Ferry's
# Dict and Queue, through the modal SDK, with Redis through redis-py.
.PHONY: bench-objects
bench-objects: build
	FERRY_BIN=$(CURDIR)/target/release/ferry PY=$(PY) bash bench/objects/run.sh
