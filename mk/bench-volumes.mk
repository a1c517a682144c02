# `make bench-volumes`: `modal volume put/get` of a 1 GiB file against `cp` on the same disk, and
# the time for a container to see a committed 1 GiB file (bench/volumes/). Needs root.
.PHONY: bench-volumes
bench-volumes:
	$(CARGO) build --release -p ferry
	FERRY_BIN=$(CURDIR)/target/release/ferry PY=$(PY) bash bench/volumes/run.sh
