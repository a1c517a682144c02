"""Prompt caching: a prefix shared across requests is served from the KV cache, reported in
`usage.prompt_tokens_details.cached_tokens`, and does not change what the model says."""
import shutil
import tempfile
import threading
from pathlib import Path

import pytest

from conftest import Server

DOC = " ".join(f"Clause {i}: the ferry leaves the harbour at {i % 12 + 1} o'clock and returns empty." for i in range(40))
SYSTEM = {"role": "system", "content": "You answer questions about this timetable.\n" + DOC}


def ask(client, model, question, **kw):
    kw.setdefault("max_tokens", 16)
    return client.chat.completions.create(
        model=model, messages=[SYSTEM, {"role": "user", "content": question}], temperature=0, **kw
    )


@pytest.fixture(scope="module")
def uncached():
    d = Path(tempfile.mkdtemp(prefix="ferry-llm-nocache-"))
    s = Server(d, extra=["--no-prompt-cache"])
    yield s
    s.stop()
    shutil.rmtree(d, ignore_errors=True)


def test_repeated_prefix_is_cached(client, model):
    first = ask(client, model, "When does the ferry leave after clause 3?")
    second = ask(client, model, "Is the ferry ever full on return?")
    # The system turn (several hundred tokens) is shared; the questions differ.
    assert first.usage.prompt_tokens > 400
    assert second.usage.prompt_tokens_details.cached_tokens >= 400
    assert second.usage.prompt_tokens_details.cached_tokens < second.usage.prompt_tokens
    # A repeated request reuses all but the last prompt token (its logits must be computed again).
    again = ask(client, model, "Is the ferry ever full on return?")
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1
    # The cached prefix makes prompt processing cheaper than the uncached first request.
    assert again.model_extra["timings"]["prompt_ms"] < first.model_extra["timings"]["prompt_ms"]


def test_streaming_usage_reports_cached_tokens(client, model):
    ask(client, model, "What is clause 7 about?")
    stream = client.chat.completions.create(
        model=model, messages=[SYSTEM, {"role": "user", "content": "What is clause 8 about?"}],
        temperature=0, max_tokens=8, stream=True, stream_options={"include_usage": True},
    )
    usage = [c.usage for c in stream if c.usage is not None]
    assert len(usage) == 1
    assert usage[0].prompt_tokens_details.cached_tokens >= 400


def test_outputs_are_the_same_with_and_without_the_cache(client, model, uncached):
    questions = ["When does the ferry leave after clause 3?", "Summarise clause 12.", "Is the ferry ever full on return?"]
    with_cache = [ask(client, model, q, max_tokens=24) for q in questions]
    assert any(r.usage.prompt_tokens_details.cached_tokens > 0 for r in with_cache)
    without = [ask(uncached.client, uncached.model, q, max_tokens=24) for q in questions]
    assert all(r.usage.prompt_tokens_details.cached_tokens == 0 for r in without)
    for a, b in zip(with_cache, without):
        assert a.choices[0].message.content == b.choices[0].message.content
        assert a.usage.prompt_tokens == b.usage.prompt_tokens


def test_concurrent_requests_share_a_prefix_being_served(client, model):
    """A request whose prefix is held by a running sequence copies it instead of recomputing."""
    ask(client, model, "Warm the cache.")
    results = []

    def one(q):
        results.append(ask(client, model, q, max_tokens=24))

    threads = [threading.Thread(target=one, args=(f"Question number {i}: when is the last ferry?",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    assert all(r.usage.prompt_tokens_details.cached_tokens >= 400 for r in results)


def test_cache_is_bounded_and_evicts_least_recently_used(client, model):
    """More distinct long prefixes than slots: old ones are evicted, the newest stays cached."""
    docs = [f"Document {k}. " + " ".join(f"Line {i} of document {k} talks about ship {k * 100 + i}." for i in range(40)) for k in range(6)]

    def run(doc):
        return client.chat.completions.create(
            model=model, messages=[{"role": "system", "content": doc}, {"role": "user", "content": "Which ship?"}],
            temperature=0, max_tokens=4,
        )

    for d in docs:
        assert run(d).usage.prompt_tokens_details.cached_tokens < 100
    # The most recent document is still cached; the first one (of six, with four slots) is gone.
    assert run(docs[-1]).usage.prompt_tokens_details.cached_tokens > 300
    assert run(docs[0]).usage.prompt_tokens_details.cached_tokens < 100
