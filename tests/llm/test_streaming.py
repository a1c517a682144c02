"""Server-sent events as the SDK consumes them: chunk shape, usage chunk, n > 1, cancellation."""
import threading
import time

USER = [{"role": "user", "content": "Write one sentence about the sea."}]


def test_stream_matches_the_non_streamed_answer(client, model):
    full = client.chat.completions.create(model=model, messages=USER, max_tokens=16, temperature=0)
    chunks = list(client.chat.completions.create(model=model, messages=USER, max_tokens=16, temperature=0, stream=True))
    assert len(chunks) >= 3
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [full.choices[0].finish_reason]
    assert all(c.usage is None for c in chunks)


def test_include_usage_adds_a_final_usage_chunk(client, model):
    chunks = list(client.chat.completions.create(
        model=model, messages=USER, max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.completion_tokens == 8
    assert last.usage.total_tokens == last.usage.prompt_tokens + 8
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_with_n_and_stop_and_logprobs(client, model):
    chunks = list(client.chat.completions.create(
        model=model, messages=USER, max_tokens=10, temperature=0.8, seed=3, n=2, stream=True, logprobs=True))
    by_index = {0: "", 1: ""}
    lp_tokens = {0: [], 1: []}
    finishes = {}
    for c in chunks:
        for ch in c.choices:
            by_index[ch.index] += ch.delta.content or ""
            if ch.logprobs and ch.logprobs.content:
                lp_tokens[ch.index] += [t.token for t in ch.logprobs.content]
            if ch.finish_reason:
                finishes[ch.index] = ch.finish_reason
    assert set(finishes) == {0, 1}
    for i in (0, 1):
        assert by_index[i]
        assert "".join(lp_tokens[i]).startswith(by_index[i][:5])


def test_closing_a_stream_frees_the_server(client, model):
    stream = client.chat.completions.create(model=model, messages=USER, max_tokens=2000, temperature=0.7, stream=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    # The abandoned sequence must not hold the engine: a new request finishes promptly.
    t = time.time()
    r = client.chat.completions.create(model=model, messages=USER, max_tokens=4)
    assert r.usage.completion_tokens == 4
    assert time.time() - t < 30


def test_concurrent_streams_are_batched_together(client, model):
    """Four streams share the engine: every one has its first token before any of them ends.
    A server that ran requests one after another would start the fourth only after the third ended."""
    start = time.time()
    first, end = {}, {}

    def run(i):
        for c in client.chat.completions.create(model=model, messages=USER, max_tokens=24, temperature=0, stream=True,
                                                logit_bias={"1": -100, "106": -100}):
            if c.choices and c.choices[0].delta.content and i not in first:
                first[i] = time.time() - start
        end[i] = time.time() - start

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    [th.start() for th in threads]
    [th.join() for th in threads]
    assert len(first) == len(end) == 4
    assert max(first.values()) < min(end.values()), (first, end)
