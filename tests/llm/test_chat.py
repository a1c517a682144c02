"""Chat completions through the official openai SDK: sampling controls, usage, errors."""
import openai
import pytest

from conftest import raw

USER = [{"role": "user", "content": "Write one sentence about the sea."}]


def chat(client, model, **kw):
    kw.setdefault("messages", USER)
    kw.setdefault("max_tokens", 12)
    return client.chat.completions.create(model=model, **kw)


def test_models_list_and_retrieve(client, model):
    models = client.models.list().data
    assert [m.id for m in models] == [model]
    assert models[0].object == "model"
    assert client.models.retrieve(model).id == model
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_every_request_needs_the_key(server, model):
    bad = openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.models.list()
    assert e.value.status_code == 401
    assert e.value.body["code"] == "invalid_api_key"
    status, body = raw("POST", f"{server.base_url}/chat/completions", b'{"model": "m", "messages": []}')
    assert status == 401
    assert body["error"]["type"] == "invalid_request_error"


def test_basic_completion_shape_and_usage(client, model):
    r = chat(client, model, temperature=0)
    assert r.id.startswith("chatcmpl-")
    assert r.object == "chat.completion"
    assert r.model == model
    c = r.choices[0]
    assert c.message.role == "assistant"
    assert isinstance(c.message.content, str) and c.message.content.strip()
    assert c.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 5
    assert 0 < r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_multi_turn_with_every_role(client, model):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": "Answer in English."},
        {"role": "user", "content": [{"type": "text", "text": "What is the weather in Paris?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\": 18}"},
        {"role": "assistant", "content": "It is 18 C."},
        {"role": "user", "content": "And tomorrow?"},
    ]
    short = chat(client, model, messages=messages[-1:], temperature=0)
    r = chat(client, model, messages=messages, temperature=0)
    assert r.choices[0].message.content
    # The history is really in the prompt.
    assert r.usage.prompt_tokens > short.usage.prompt_tokens + 30


def test_greedy_is_deterministic_and_seed_reproduces(client, model):
    a = chat(client, model, temperature=0).choices[0].message.content
    b = chat(client, model, temperature=0).choices[0].message.content
    assert a == b
    s1 = chat(client, model, temperature=1.2, seed=42).choices[0].message.content
    s2 = chat(client, model, temperature=1.2, seed=42).choices[0].message.content
    assert s1 == s2
    others = {chat(client, model, temperature=1.2, seed=s).choices[0].message.content for s in (1, 2, 3)}
    assert len(others | {s1}) > 1


def test_top_k_one_and_tiny_top_p_equal_greedy(client, model):
    greedy = chat(client, model, temperature=0).choices[0].message.content
    assert chat(client, model, temperature=1.5, top_p=1e-6, seed=5).choices[0].message.content == greedy
    r = client.chat.completions.create(model=model, messages=USER, max_tokens=12, temperature=1.5, seed=5, extra_body={"top_k": 1})
    assert r.choices[0].message.content == greedy


def test_max_tokens_and_max_completion_tokens(client, model):
    r = chat(client, model, max_tokens=3, temperature=0)
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"
    r = chat(client, model, max_tokens=None, max_completion_tokens=4, temperature=0)
    assert r.usage.completion_tokens == 4 and r.choices[0].finish_reason == "length"


def test_stop_sequences_cut_the_text(client, model):
    full = chat(client, model, temperature=0, max_tokens=20).choices[0].message.content
    words = full.split()
    assert len(words) >= 3
    stop = words[2]
    r = chat(client, model, temperature=0, max_tokens=20, stop=[stop, "zzzz"])
    content = r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    assert stop not in content
    assert full.startswith(content)
    assert content == full[: full.index(stop)]


def test_n_choices(client, model):
    r = chat(client, model, n=3, temperature=1.0, seed=7, max_tokens=6)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.message.content is not None for c in r.choices)
    # Usage adds up the three completions; the prompt is counted once.
    assert 3 <= r.usage.completion_tokens <= 18
    single = chat(client, model, max_tokens=6)
    assert r.usage.prompt_tokens == single.usage.prompt_tokens


def test_logprobs(client, model):
    r = chat(client, model, temperature=0, max_tokens=5, logprobs=True, top_logprobs=3)
    lp = r.choices[0].logprobs.content
    assert len(lp) == r.usage.completion_tokens == 5
    assert "".join(t.token for t in lp) == r.choices[0].message.content
    for t in lp:
        assert t.logprob <= 0
        assert len(t.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert t.top_logprobs[0].token == t.token
        assert abs(t.top_logprobs[0].logprob - t.logprob) < 1e-4
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob
        assert bytes(t.bytes).decode("utf-8", "replace") == t.token


def test_logit_bias_forces_a_token(client, model):
    # 5279 is " capital" in Gemma 3's vocabulary (checked by the tokenizer unit test).
    r = chat(client, model, temperature=0, max_tokens=3, logit_bias={"5279": 100})
    assert r.choices[0].message.content == " capital capital capital"
    with pytest.raises(openai.BadRequestError):
        chat(client, model, logit_bias={"999999999": 5})


def test_penalties_reduce_repetition(client, model):
    def distinct_ratio(**kw):
        r = chat(client, model, temperature=0, max_tokens=30, logprobs=True, **kw)
        toks = [t.token for t in r.choices[0].logprobs.content]
        return len(set(toks)) / len(toks)

    plain = distinct_ratio()
    assert distinct_ratio(frequency_penalty=2.0) > plain
    assert distinct_ratio(presence_penalty=2.0) > plain


@pytest.mark.parametrize(
    "kw,param",
    [
        ({"temperature": 3}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"n": 0}, "n"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.[0].role"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"max_tokens": 0}, "max_tokens"),
    ],
)
def test_bad_requests_are_400_in_openai_format(client, model, kw, param):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, model, **kw)
    assert e.value.status_code == 400
    assert e.value.body["type"] == "invalid_request_error"
    assert e.value.body["param"] == param
    assert e.value.body["message"]


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=USER)
    assert e.value.body["code"] == "model_not_found"


def test_context_length_exceeded(client, model):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, model, messages=[{"role": "user", "content": "sea " * 5000}], max_tokens=10)
    assert e.value.body["code"] == "context_length_exceeded"


def test_image_input_is_rejected_without_a_vision_encoder(client, model):
    png = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, model, messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": png}}]}])
    assert "vision" in e.value.body["message"]
    assert e.value.body["param"] == "messages.[0].content.[1]"


def test_malformed_bodies_never_crash_the_server(server, model):
    for body in [b"{not json", b"[]", b'{"model": 5}', b'{"model": "x", "messages": "hi"}', b'{"model": "' + model.encode() + b'", "messages": [{"content": 1}]}']:
        status, r = raw("POST", f"{server.base_url}/chat/completions", body, server.api_key)
        assert status in (400, 404), r
        assert r["error"]["message"]
    status, r = raw("GET", f"{server.base_url}/nope", None, server.api_key)
    assert status == 404 and r["error"]["code"] == "unknown_url"
    assert server.client.models.list().data
