# Model serving (crates/llm). `make bench-llm` compares `ferry llm serve` with llama.cpp on the
# same GGUF; `make test-llm` runs the model-serving tests alone.
.PHONY: bench-llm test-llm
bench-llm: build
	$(PY) bench/llm/bench.py

test-llm: build
	$(CARGO) test --release -p ferry-llm
	FERRY_BIN=$(CURDIR)/target/release/ferry $(PY) -m pytest tests/llm -q
