# `make bench-store`: Dict and Queue ops/s with the state on PostgreSQL against the embedded
# SQLite, through the modal SDK (bench/store).
.PHONY: bench-store
bench-store: build
	FERRY_BIN=$(CURDIR)/target/release/ferry PY=$(PY) bash bench/store/run.sh
