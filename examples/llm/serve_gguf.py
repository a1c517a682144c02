"""Serve a GGUF model from a Modal Volume with `ferry llm` behind `@modal.web_server`: an
OpenAI-compatible endpoint (chat, streaming, tools, structured outputs, embeddings, batches)
that the official `openai` SDK reaches with only a base URL and a key.

    modal volume create llm-models
    modal volume put llm-models models/gemma-3-270m-q4_k_m.gguf /gemma-3-270m-q4_k_m.gguf
    modal secret create llm-api-key FERRY_LLM_API_KEY=sk-choose-one
    FERRY_LLM_SERVER_BIN=$(command -v ferry) modal deploy examples/llm/serve_gguf.py

Then `OpenAI(base_url=<the printed URL> + "/v1", api_key="sk-choose-one")`.

The container runs the same `ferry` binary as the host (added to the image from
FERRY_LLM_SERVER_BIN, default: `ferry` on PATH), which needs only glibc, libstdc++ and libgomp.
Settings (read when the app is deployed): FERRY_LLM_MODEL_FILE (the GGUF's path in the volume),
FERRY_LLM_VOLUME, FERRY_LLM_SECRET, FERRY_LLM_PORT, FERRY_LLM_ARGS (extra `ferry llm serve` flags).
"""
import os
import shlex
import shutil
import subprocess

import modal

MODEL_FILE = os.environ.get("FERRY_LLM_MODEL_FILE", "gemma-3-270m-q4_k_m.gguf")
VOLUME = os.environ.get("FERRY_LLM_VOLUME", "llm-models")
SECRET = os.environ.get("FERRY_LLM_SECRET", "llm-api-key")
PORT = int(os.environ.get("FERRY_LLM_PORT", "8000"))
EXTRA_ARGS = os.environ.get("FERRY_LLM_ARGS", "")

app = modal.App("ferry-llm")
models = modal.Volume.from_name(VOLUME, create_if_missing=True)

image = modal.Image.debian_slim().apt_install("libgomp1")
if modal.is_local():
    # Only the deploying machine has the binary; inside the container the image already holds it.
    server_bin = os.environ.get("FERRY_LLM_SERVER_BIN") or shutil.which("ferry")
    if not server_bin:
        raise SystemExit("set FERRY_LLM_SERVER_BIN to the ferry binary the container should run")
    image = image.add_local_file(server_bin, "/usr/local/bin/ferry", copy=True)


@app.function(
    image=image,
    volumes={"/models": models.read_only()},
    secrets=[modal.Secret.from_name(SECRET)],
    env={"FERRY_LLM_MODEL_FILE": MODEL_FILE, "FERRY_LLM_PORT": str(PORT), "FERRY_LLM_ARGS": EXTRA_ARGS},
    timeout=24 * 3600,
)
@modal.concurrent(max_inputs=64)
@modal.web_server(PORT, startup_timeout=180)
def serve():
    # FERRY_LLM_API_KEY comes from the secret; `ferry llm serve` reads it from the environment.
    cmd = [
        "ferry", "llm", "serve",
        "--model", f"/models/{MODEL_FILE}",
        "--host", "0.0.0.0", "--port", str(PORT),
        "--data-dir", "/tmp/ferry-llm",
        *shlex.split(EXTRA_ARGS),
    ]
    subprocess.Popen(cmd)
