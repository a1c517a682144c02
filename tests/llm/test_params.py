"""Chat-completion parameters beyond the basics, through the official openai SDK: logprobs in
both shapes, `n` with seeds, stop sequences while streaming, logit bias, `max_completion_tokens`,
`stream_options`, `user`/`metadata`, the usage block, and OpenAI-shaped errors for every invalid
parameter (status, `type`, `param`, `code`)."""
import openai
import pytest

from conftest import raw

USER = [{"role": "user", "content": "Write one sentence about the sea."}]


def chat(client, model, **kw):
    kw.setdefault("messages", USER)
    kw.setdefault("max_tokens", 10)
    return client.chat.completions.create(model=model, **kw)


def stream_text(client, model, **kw):
    """Concatenated streamed text per choice, finish reasons, logprob tokens and all chunks."""
    chunks = list(chat(client, model, stream=True, **kw))
    text, finish, lps = {}, {}, {}
    for c in chunks:
        for ch in c.choices:
            text[ch.index] = text.get(ch.index, "") + (ch.delta.content or "")
            if ch.finish_reason:
                finish[ch.index] = ch.finish_reason
            if ch.logprobs and ch.logprobs.content:
                lps.setdefault(ch.index, []).extend(ch.logprobs.content)
    return text, finish, lps, chunks


def test_streamed_logprobs_equal_the_plain_ones(client, model):
    plain = chat(client, model, temperature=0, max_tokens=6, logprobs=True, top_logprobs=2)
    text, _, lps, _ = stream_text(client, model, temperature=0, max_tokens=6, logprobs=True, top_logprobs=2)
    a = plain.choices[0].logprobs.content
    b = lps[0]
    assert [t.token for t in a] == [t.token for t in b]
    assert all(abs(x.logprob - y.logprob) < 1e-3 for x, y in zip(a, b))
    assert all(len(t.top_logprobs) == 2 for t in b)
    assert text[0] == plain.choices[0].message.content
    # Without logprobs the field is null, as the SDK expects.
    assert chat(client, model, max_tokens=2).choices[0].logprobs is None


def test_n_with_a_seed_is_reproducible_choice_by_choice(client, model):
    a = chat(client, model, n=3, temperature=1.3, seed=11, max_tokens=8)
    b = chat(client, model, n=3, temperature=1.3, seed=11, max_tokens=8)
    ta = [c.message.content for c in a.choices]
    assert ta == [c.message.content for c in b.choices]
    assert len(set(ta)) > 1, "the choices of one request should differ"
    # Streaming gives the same choices for the same seed.
    text, finish, _, _ = stream_text(client, model, n=3, temperature=1.3, seed=11, max_tokens=8)
    assert [text[i] for i in range(3)] == ta
    assert set(finish) == {0, 1, 2}
    # (A single completion with the same seed need not equal choice 0: with the prompt cache its
    # prompt may come from reused KV, whose float rounding differs; OpenAI's seed is best effort
    # too. The same request repeated is what is reproducible.)


def test_stop_sequences_while_streaming_never_leak(client, model):
    full = chat(client, model, temperature=0, max_tokens=20).choices[0].message.content
    words = full.split()
    assert len(words) >= 4
    stop = words[3]
    plain = chat(client, model, temperature=0, max_tokens=20, stop=stop)
    text, finish, _, chunks = stream_text(client, model, temperature=0, max_tokens=20, stop=stop)
    assert text[0] == plain.choices[0].message.content == full[: full.index(stop)]
    assert finish == {0: "stop"}
    # No chunk ever carried any part of the stop sequence past the cut.
    assert stop not in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_logit_bias_bans_and_forces_tokens(client, model):
    # Token ids from the tokenizer unit test: 5279 is " capital", 7001 is " France".
    r = chat(client, model, temperature=0, max_tokens=3, logit_bias={"5279": -100, "7001": 100})
    assert r.choices[0].message.content == " France France France"
    r = chat(client, model, temperature=0, max_tokens=3, logit_bias={"5279": 100, "7001": -100})
    assert r.choices[0].message.content == " capital capital capital"
    # Sampling at a high temperature still never picks a banned token.
    r = chat(client, model, temperature=1.5, seed=3, max_tokens=3, logprobs=True, logit_bias={"5279": 100, "7001": -100})
    assert [t.token for t in r.choices[0].logprobs.content] == [" capital"] * 3


def test_penalties_and_bias_together_are_accepted_and_bounded(client, model):
    r = chat(client, model, temperature=0.7, seed=1, presence_penalty=-2, frequency_penalty=2, logit_bias={"5279": -100})
    assert r.choices[0].message.content is not None
    assert " capital" not in r.choices[0].message.content


def test_max_completion_tokens_wins_and_counts(client, model):
    r = chat(client, model, max_tokens=9, max_completion_tokens=2, temperature=0)
    assert r.usage.completion_tokens == 2 and r.choices[0].finish_reason == "length"
    text, finish, _, chunks = stream_text(client, model, max_tokens=None, max_completion_tokens=3, temperature=0,
                                          stream_options={"include_usage": True})
    assert finish == {0: "length"}
    assert chunks[-1].usage.completion_tokens == 3


def test_usage_block_has_openai_details(client, model):
    r = chat(client, model, max_tokens=2)
    assert r.usage.prompt_tokens_details.cached_tokens >= 0
    assert r.usage.prompt_tokens_details.cached_tokens <= r.usage.prompt_tokens
    assert r.usage.completion_tokens_details.reasoning_tokens == 0
    _, _, _, chunks = stream_text(client, model, max_tokens=2, n=2, stream_options={"include_usage": True})
    u = chunks[-1].usage
    assert chunks[-1].choices == []
    assert u.completion_tokens == 4 and u.prompt_tokens == r.usage.prompt_tokens
    assert u.prompt_tokens_details.cached_tokens >= 0


def test_user_metadata_store_and_parallel_tool_calls_are_accepted(client, model):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    r = chat(client, model, user="user-1", metadata={"team": "a"}, store=False, service_tier="auto",
             tools=tools, tool_choice="required", parallel_tool_calls=False, max_tokens=40, temperature=0)
    assert r.choices[0].finish_reason == "tool_calls"
    assert len(r.choices[0].message.tool_calls) == 1


@pytest.mark.parametrize(
    "kw,param,code",
    [
        ({"temperature": 2.5}, "temperature", "decimal_above_max_value"),
        ({"temperature": -1}, "temperature", "decimal_below_min_value"),
        ({"top_p": 1.5}, "top_p", "decimal_above_max_value"),
        ({"presence_penalty": 3}, "presence_penalty", "decimal_above_max_value"),
        ({"frequency_penalty": -2.5}, "frequency_penalty", "decimal_below_min_value"),
        ({"n": 0}, "n", "integer_below_min_value"),
        ({"n": 17}, "n", "integer_above_max_value"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "integer_above_max_value"),
        ({"top_logprobs": 2}, "top_logprobs", "invalid_value"),
        ({"max_tokens": 0}, "max_tokens", "integer_below_min_value"),
        ({"max_tokens": None, "max_completion_tokens": -1}, "max_completion_tokens", "integer_below_min_value"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
        ({"logit_bias": {"abc": 1}}, "logit_bias", "invalid_value"),
        ({"logit_bias": {"5279": 101}}, "logit_bias", "decimal_above_max_value"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
        ({"metadata": {"k": 1}}, "metadata", "invalid_value"),
        ({"temperature": "hot"}, "temperature", "invalid_type"),
        ({"n": 1.5}, "n", "invalid_type"),
        ({"seed": "x"}, "seed", "invalid_type"),
        ({"logprobs": "yes"}, "logprobs", "invalid_type"),
        ({"stop": 5}, "stop", "invalid_type"),
        ({"messages": []}, "messages", "empty_array"),
        ({"messages": [{"content": "hi"}]}, "messages.[0].role", "missing_required_parameter"),
        ({"messages": [{"role": "user", "content": [{"type": "video", "video": "x"}]}]}, "messages.[0].content.[0].type", "invalid_value"),
        ({"tool_choice": "required"}, "tool_choice", "invalid_value"),
        ({"response_format": {"type": "xml"}}, "response_format.type", "invalid_value"),
    ],
)
def test_every_invalid_parameter_is_an_openai_400(client, model, kw, param, code):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, model, **kw)
    assert e.value.status_code == 400
    body = e.value.body
    assert body["type"] == "invalid_request_error"
    assert body["param"] == param
    assert body["code"] == code
    assert body["message"]


def test_missing_model_and_non_object_bodies(server, model):
    status, r = raw("POST", f"{server.base_url}/chat/completions", b'{"messages": []}', server.api_key)
    assert status == 400 and r["error"]["param"] == "model" and r["error"]["code"] == "missing_required_parameter"
    status, r = raw("POST", f"{server.base_url}/chat/completions", b"[1, 2]", server.api_key)
    assert status == 400 and r["error"]["code"] == "invalid_type"


@pytest.mark.parametrize(
    "url,code",
    [
        ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==",
         "image_input_not_supported"),
        ("https://example.invalid/cat.png", "image_input_not_supported"),
        ("data:image/png;base64,@@@", "invalid_image_url"),
        ("data:image/png,rawbytes", "invalid_image_url"),
        ("data:image/tiff;base64,AAAA", "invalid_image_format"),
        ("data:image/png;base64,R0lGODlhAQABAAAAACw=", "invalid_image_format"),
        ("ftp://host/x.png", "invalid_image_url"),
    ],
)
def test_image_parts_are_parsed_then_refused_without_vision(client, model, url, code):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, model, messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url, "detail": "low"}}]}])
    assert e.value.body["code"] == code
    assert e.value.body["param"] == "messages.[0].content.[1]"
