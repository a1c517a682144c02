# Container runtime and image builder (crates/runtime). Needs root.
RUNTIME_TARGET_DIR ?= target

.PHONY: runtime-test runtime-test-slow runtime-bench
runtime-test:
	CARGO_TARGET_DIR=$(RUNTIME_TARGET_DIR) $(CARGO) test -p ferry-runtime

# Also builds the exact `Image.debian_slim()` layer (apt-get install build-essential).
runtime-test-slow:
	CARGO_TARGET_DIR=$(RUNTIME_TARGET_DIR) $(CARGO) test -p ferry-runtime -- --include-ignored

runtime-bench:
	CARGO_TARGET_DIR=$(RUNTIME_TARGET_DIR) $(CARGO) run --release -p ferry-runtime --example cold_start
