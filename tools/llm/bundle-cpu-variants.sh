#!/usr/bin/env bash
# After `cargo build --release --features cpu-variants` (ferry or ferry-llm): puts llama.cpp's
# shared libraries (under their sonames) and the CPU backend modules (libggml-cpu-<isa>.so) next
# to the binaries in TARGET/release, where the binaries look for them ($ORIGIN). Ship that
# directory's binary together with these files. Usage: tools/llm/bundle-cpu-variants.sh [TARGET]
set -euo pipefail
cd "$(dirname "$0")/../.."
target=${1:-${CARGO_TARGET_DIR:-target}}
rel="$target/release"
out=$(ls -td "$rel"/build/llama-cpp-sys-2-*/out 2>/dev/null | while read -r d; do [ -d "$d/backends" ] && echo "$d" && break; done)
if [ -z "$out" ]; then
  echo "no cpu-variants build of llama.cpp under $rel/build (build with --features cpu-variants first)" >&2
  exit 1
fi
for f in "$out"/lib/lib*.so.*; do
  # Only the soname links (libggml.so.0), copied as files.
  case "$f" in *.so.[0-9]) cp -fL "$f" "$rel/$(basename "$f")" ;; esac
done
cp -f "$out"/backends/libggml-cpu-*.so "$rel/"
echo "bundled llama.cpp libraries and $(ls "$out"/backends | wc -l) CPU modules into $rel"
