# `make bench-web`: requests/s and p50/p99 of a warm fastapi_endpoint through Ferry's web
# gateway against the same FastAPI app under uvicorn, in one run (bench/web/).
.PHONY: bench-web
bench-web:
	$(CARGO) build --release -p ferry
	FERRY_BIN=$(CURDIR)/target/release/ferry PY=$(PY) bash bench/web/run.sh
