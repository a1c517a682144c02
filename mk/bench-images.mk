# `make bench-images`: uv_pip_install, cached rebuilds and from_registry pulls on Ferry against
# raw uv and skopeo in the same run (bench/images/).
.PHONY: bench-images
bench-images:
	$(CARGO) build --release -p ferry
	FERRY_BIN=$(CURDIR)/target/release/ferry PY=$(PY) bash bench/images/run.sh
