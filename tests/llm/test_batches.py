"""Files and Batch API through the SDK: JSONL upload, status transitions, output and error files,
cancel, persistence across a restart, and batch work yielding to interactive requests."""
import io
import json
import time

import openai
import pytest


def jsonl(lines):
    return io.BytesIO("".join(json.dumps(l) + "\n" for l in lines).encode())


def chat_line(model, cid, content="Say hi.", **body):
    return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 6, **body}}


def wait(client, batch_id, states=("completed", "failed", "cancelled", "expired"), timeout=240):
    seen = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        b = client.batches.retrieve(batch_id)
        if not seen or seen[-1] != b.status:
            seen.append(b.status)
        if b.status in states:
            return b, seen
        time.sleep(0.2)
    pytest.fail(f"batch {batch_id} stuck; states seen {seen}")


def test_files_round_trip(client):
    f = client.files.create(file=("in.jsonl", jsonl([{"a": 1}]), "application/jsonl"), purpose="batch")
    assert f.id.startswith("file-") and f.purpose == "batch" and f.bytes > 0 and f.filename == "in.jsonl"
    assert client.files.retrieve(f.id).id == f.id
    assert f.id in [x.id for x in client.files.list(purpose="batch")]
    assert json.loads(client.files.content(f.id).read()) == {"a": 1}
    assert client.files.delete(f.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("bad.jsonl", io.BytesIO(b"not json\n"), "application/jsonl"), purpose="batch")


def test_batch_completes_with_output_and_error_files(client, model):
    lines = [chat_line(model, f"ok-{i}", f"Name a fish number {i}.") for i in range(3)]
    lines.append(chat_line(model, "bad-temp", temperature=7))
    f = client.files.create(file=("b.jsonl", jsonl(lines), "application/jsonl"), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"job": "t"})
    assert b.status == "validating" and b.metadata == {"job": "t"}
    b, seen = wait(client, b.id)
    assert b.status == "completed", seen
    assert seen[-1] == "completed" and set(seen) <= {"validating", "in_progress", "finalizing", "completed"}
    assert b.request_counts.total == 4 and b.request_counts.completed == 3 and b.request_counts.failed == 1
    assert b.in_progress_at and b.completed_at and b.finalizing_at
    out = [json.loads(l) for l in client.files.content(b.output_file_id).read().splitlines()]
    assert sorted(o["custom_id"] for o in out) == ["ok-0", "ok-1", "ok-2"]
    for o in out:
        assert o["response"]["status_code"] == 200
        body = o["response"]["body"]
        assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"] is not None
    errs = [json.loads(l) for l in client.files.content(b.error_file_id).read().splitlines()]
    assert [e["custom_id"] for e in errs] == ["bad-temp"]
    assert errs[0]["response"]["status_code"] == 400 and "temperature" in errs[0]["error"]["message"]
    assert client.files.retrieve(b.output_file_id).purpose == "batch_output"
    assert b.id in [x.id for x in client.batches.list()]


def test_invalid_input_fails_validation(client, model):
    lines = [chat_line(model, "a"), {**chat_line(model, "b"), "url": "/v1/embeddings"}]
    f = client.files.create(file=("b.jsonl", jsonl(lines), "application/jsonl"), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    b, seen = wait(client, b.id)
    assert b.status == "failed"
    assert b.errors.data[0].line == 2 and b.errors.data[0].code == "mismatched_endpoint"
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=f.id, endpoint="/v1/images/generations", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-missing", endpoint="/v1/chat/completions", completion_window="24h")


def test_cancel_stops_a_running_batch(client, model):
    lines = [chat_line(model, f"c-{i}", max_tokens=40) for i in range(30)]
    f = client.files.create(file=("c.jsonl", jsonl(lines), "application/jsonl"), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait(client, b.id, states=("in_progress",))
    c = client.batches.cancel(b.id)
    assert c.status in ("cancelling", "cancelled")
    b, _ = wait(client, b.id)
    assert b.status == "cancelled" and b.cancelled_at
    assert b.request_counts.completed < 30
    done_id = _completed_batch(client, model)
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(done_id)


def _completed_batch(client, model):
    f = client.files.create(file=("d.jsonl", jsonl([chat_line(model, "one", max_tokens=2)]), "application/jsonl"), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    b, _ = wait(client, b.id)
    assert b.status == "completed"
    return b.id


def test_interactive_requests_overtake_batch_work(client, model):
    lines = [chat_line(model, f"p-{i}", max_tokens=48) for i in range(16)]
    f = client.files.create(file=("p.jsonl", jsonl(lines), "application/jsonl"), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait(client, b.id, states=("in_progress",))
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert r.usage.completion_tokens == 4
    # The interactive request did not wait for the batch to drain.
    assert client.batches.retrieve(b.id).status == "in_progress"
    client.batches.cancel(b.id)
    wait(client, b.id)


def test_moderations_batch(client, model):
    lines = [{"custom_id": f"m{i}", "method": "POST", "url": "/v1/moderations", "body": {"input": t}}
             for i, t in enumerate(["have a nice day", "you are a stupid idiot"])]
    f = client.files.create(file=("m.jsonl", jsonl(lines), "application/jsonl"), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/moderations", completion_window="24h")
    b, _ = wait(client, b.id)
    out = {o["custom_id"]: o for o in map(json.loads, client.files.content(b.output_file_id).read().splitlines())}
    assert out["m0"]["response"]["body"]["results"][0]["flagged"] is False
    assert out["m1"]["response"]["body"]["results"][0]["flagged"] is True


def test_batches_and_files_survive_a_restart(fresh_server):
    client, model = fresh_server.client, fresh_server.model
    lines = [chat_line(model, f"r-{i}", max_tokens=12) for i in range(6)]
    f = client.files.create(file=("r.jsonl", jsonl(lines), "application/jsonl"), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait(client, b.id, states=("in_progress", "completed"))
    fresh_server.restart()
    client = fresh_server.client
    assert client.files.retrieve(f.id).filename == "r.jsonl"
    b, seen = wait(client, b.id)
    assert b.status == "completed"
    out = [json.loads(l) for l in client.files.content(b.output_file_id).read().splitlines()]
    assert sorted(o["custom_id"] for o in out) == sorted(l["custom_id"] for l in lines)
