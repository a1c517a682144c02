"""The model-serving example on Ferry: examples/llm/serve_gguf.py deployed with the real modal
CLI serves the test GGUF from a Volume through `ferry llm` behind `@modal.web_server`, and the
official openai SDK talks to its web URL."""

import os
import socket
import time
from pathlib import Path

import pytest

from conftest import REPO, Ferry, ferry_bin, unique

MODEL = REPO / "models" / "gemma-3-270m-q4_k_m.gguf"
APP = REPO / "examples" / "llm" / "serve_gguf.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def deployed():
    if not MODEL.exists():
        pytest.fail(f"test model {MODEL} is missing: run tools/setup.d/llm.sh")
    data = Path(os.environ.get("FERRY_TEST_DATA_DIR", "/var/tmp/ferry-test"))
    server = Ferry(data, "--no-modal-profile", "--web-port", str(free_port())).start()
    volume, secret, key = unique("llm-models"), unique("llm-key"), "sk-" + unique("test")
    try:
        for args in (
            ("volume", "create", volume),
            ("volume", "put", volume, str(MODEL), "/" + MODEL.name),
            ("secret", "create", secret, f"FERRY_LLM_API_KEY={key}"),
        ):
            out = server.modal(*args, timeout=300)
            assert out.returncode == 0, out.stdout + out.stderr
        env = {
            "FERRY_LLM_SERVER_BIN": ferry_bin(),
            "FERRY_LLM_MODEL_FILE": MODEL.name,
            "FERRY_LLM_VOLUME": volume,
            "FERRY_LLM_SECRET": secret,
            "FERRY_LLM_PORT": str(free_port()),
            "FERRY_LLM_ARGS": "--parallel 2 --ctx-size 1024 --threads 1",
        }
        out = server.modal("deploy", str(APP), timeout=900, **env)
        assert out.returncode == 0, out.stdout + out.stderr
        code = 'import modal; print(modal.Function.from_name("ferry-llm", "serve").get_web_url())'
        url = server.python(code)
        assert url.returncode == 0, url.stderr
        server.llm_url, server.llm_key = url.stdout.strip(), key
        yield server
    finally:
        server.modal("app", "stop", "ferry-llm", "--yes")
        server.modal("volume", "delete", volume, "--yes")  # 253 MB per run otherwise
        server.stop()


def test_openai_sdk_against_the_web_url(deployed):
    import openai

    client = openai.OpenAI(base_url=deployed.llm_url + "/v1", api_key=deployed.llm_key, max_retries=0, timeout=300)
    # The first request waits for a container and the model to load.
    deadline = time.time() + 300
    while True:
        try:
            models = client.models.list().data
            break
        except (openai.APIConnectionError, openai.InternalServerError, openai.APIStatusError) as e:
            if time.time() > deadline or getattr(e, "status_code", 0) == 401:
                raise
            time.sleep(2)
    assert [m.id for m in models] == [MODEL.stem]
    r = client.chat.completions.create(model=MODEL.stem, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8, temperature=0)
    assert r.choices[0].message.content
    assert r.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(model=MODEL.stem, messages=[{"role": "user", "content": "Count to three."}],
                                                 max_tokens=8, stream=True))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    # The key from the Modal secret is enforced.
    bad = openai.OpenAI(base_url=deployed.llm_url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
