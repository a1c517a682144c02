"""Vision: `image_url` parts (data URLs; http(s) URLs only from hosts the operator allows) go
through llama.cpp's multimodal library with the projector given by `--mmproj`.

The projector is generated here (tests/llm/tiny_projector.py: a random-weight two-block CLIP ViT
with a LLaVA MLP projector sized for the text test model), so the test checks the plumbing, not
what the model sees: each 56×56 image is 16 image tokens in the prompt, and requests with images
complete like any other.
"""
import base64
import http.server
import shutil
import tempfile
import threading
from pathlib import Path

import openai
import pytest

from conftest import MODEL, Server
from tiny_projector import IMAGE_TOKENS, png, text_embedding_length, write_projector

PNG = png()
DATA_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()


@pytest.fixture(scope="module")
def vision():
    d = Path(tempfile.mkdtemp(prefix="ferry-llm-vision-"))
    proj = write_projector(d / "test-vision-projector.gguf", text_embedding_length(MODEL))
    s = Server(d, extra=["--mmproj", str(proj), "--allow-image-host", "127.0.0.1"])
    yield s
    s.stop()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def image_host():
    """A local HTTP server with the test image at /img.png and a non-image at /page.html."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body, kind = (PNG, "image/png") if self.path == "/img.png" else (b"<html></html>", "text/html")
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()


def chat(s, parts, **kw):
    kw.setdefault("max_tokens", 4)
    return s.client.chat.completions.create(model=s.model, messages=[{"role": "user", "content": parts}], temperature=0, **kw)


def image(url=DATA_URL):
    return {"type": "image_url", "image_url": {"url": url}}


TEXT = {"type": "text", "text": "What is in this picture?"}


def test_each_image_adds_its_tokens_to_the_prompt(vision):
    none = chat(vision, [TEXT])
    one = chat(vision, [TEXT, image()])
    two = chat(vision, [TEXT, image(), image()])
    per_image = one.usage.prompt_tokens - none.usage.prompt_tokens
    # 16 image positions, plus the newline that separates the parts in the turn.
    assert IMAGE_TOKENS <= per_image <= IMAGE_TOKENS + 2, (none.usage, one.usage)
    assert two.usage.prompt_tokens - one.usage.prompt_tokens == per_image
    for r in (one, two):
        assert r.choices[0].finish_reason in ("stop", "length")
        assert isinstance(r.choices[0].message.content, str)
        assert r.usage.completion_tokens >= 1


def test_images_are_not_served_from_the_prompt_cache(vision):
    a = chat(vision, [TEXT, image()])
    b = chat(vision, [TEXT, image()])
    assert a.usage.prompt_tokens == b.usage.prompt_tokens
    # The text before the image may be reused; nothing from the image position on.
    assert b.usage.prompt_tokens_details.cached_tokens < b.usage.prompt_tokens - IMAGE_TOKENS


def test_streaming_with_an_image(vision):
    stream = chat(vision, [TEXT, image()], stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].usage.prompt_tokens >= IMAGE_TOKENS
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_responses_input_image(vision):
    s = vision
    base = s.client.responses.create(model=s.model, input=[{"role": "user", "content": [{"type": "input_text", "text": "Describe."}]}], max_output_tokens=4)
    r = s.client.responses.create(
        model=s.model,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Describe."}, {"type": "input_image", "image_url": DATA_URL}]}],
        max_output_tokens=4,
    )
    assert IMAGE_TOKENS <= r.usage.input_tokens - base.usage.input_tokens <= IMAGE_TOKENS + 2
    assert r.status in ("completed", "incomplete")


def test_undecodable_image_is_a_400(vision):
    broken = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64).decode()
    with pytest.raises(openai.BadRequestError) as e:
        chat(vision, [TEXT, image(broken)])
    assert e.value.body["code"] == "invalid_image_format"


def test_image_url_from_an_allowed_host_is_fetched(vision, image_host):
    by_data = chat(vision, [TEXT, image()])
    by_url = chat(vision, [TEXT, image(f"http://127.0.0.1:{image_host}/img.png")])
    assert by_url.usage.prompt_tokens == by_data.usage.prompt_tokens


def test_image_url_from_another_host_is_refused(vision, image_host):
    with pytest.raises(openai.BadRequestError) as e:
        chat(vision, [TEXT, image(f"http://localhost:{image_host}/img.png")])
    assert e.value.body["code"] == "invalid_image_url"
    assert "--allow-image-host" in e.value.body["message"]


def test_allowed_host_that_serves_no_image_is_a_400(vision, image_host):
    with pytest.raises(openai.BadRequestError) as e:
        chat(vision, [TEXT, image(f"http://127.0.0.1:{image_host}/page.html")])
    assert e.value.body["code"] == "invalid_image_format"
