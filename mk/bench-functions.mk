# `make bench-functions`: Ferry's .remote() round trip, .map throughput and cold starts through
# the modal SDK, against Ray and a local process pool in the same run (bench/functions/).
.PHONY: bench-functions
bench-functions:
	$(CARGO) build --release -p ferry
	FERRY_BIN=$(CURDIR)/target/release/ferry PY=$(PY) bash bench/functions/run.sh
