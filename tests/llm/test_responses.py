"""The Responses API through the official openai SDK's `client.responses`: plain and streamed
responses (OpenAI's event names and order), function tools and their outputs, `text.format`
with a JSON schema, `previous_response_id`, stored responses (retrieve, input items, delete,
durable across a restart) and OpenAI-shaped errors."""
import json

import jsonschema
import openai
import pydantic
import pytest

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


def ask(client, model, **kw):
    kw.setdefault("input", "Write one sentence about the sea.")
    kw.setdefault("max_output_tokens", 12)
    kw.setdefault("temperature", 0)
    return client.responses.create(model=model, **kw)


def test_plain_response_shape_and_usage(client, model):
    r = ask(client, model, instructions="You are terse.", metadata={"run": "1"}, user="u-1")
    assert r.id.startswith("resp_") and r.object == "response"
    assert r.status in ("completed", "incomplete")
    assert r.model == model
    assert r.instructions == "You are terse."
    assert r.metadata == {"run": "1"}
    assert len(r.output) == 1
    msg = r.output[0]
    assert msg.type == "message" and msg.role == "assistant" and msg.id.startswith("msg_")
    assert msg.content[0].type == "output_text"
    assert r.output_text == msg.content[0].text and r.output_text.strip()
    assert 0 < r.usage.output_tokens <= 12
    assert r.usage.input_tokens > 5
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.input_tokens_details.cached_tokens >= 0
    # Same words as chat completions with the same prompt: one engine, one template.
    c = client.chat.completions.create(model=model, messages=[
        {"role": "system", "content": "You are terse."}, {"role": "user", "content": "Write one sentence about the sea."}],
        max_tokens=12, temperature=0)
    assert r.output_text == c.choices[0].message.content
    assert r.usage.input_tokens == c.usage.prompt_tokens


def test_max_output_tokens_makes_an_incomplete_response(client, model):
    r = ask(client, model, max_output_tokens=3)
    assert r.status == "incomplete"
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 3


def test_streaming_events_in_openai_order(client, model):
    full = ask(client, model, max_output_tokens=10)
    events = list(ask(client, model, max_output_tokens=10, stream=True))
    types = [e.type for e in events]
    assert types[:5] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added", "response.output_text.delta"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.incomplete" if full.status == "incomplete" else "response.completed"]
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    rid = events[0].response.id
    assert all(e.response.id == rid for e in events if hasattr(e, "response"))
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    item_id = events[2].item.id
    assert all(e.item_id == item_id and e.output_index == 0 and e.content_index == 0 for e in deltas)
    text = "".join(e.delta for e in deltas)
    assert text == full.output_text
    done = events[-4]
    assert done.text == text
    final = events[-1].response
    assert final.output_text == text and final.output[0].id == item_id
    assert final.usage.output_tokens == full.usage.output_tokens
    # The streamed response is stored like any other.
    assert client.responses.retrieve(rid).output_text == text


def test_sdk_stream_helper_assembles_the_final_response(client, model):
    class Answer(pydantic.BaseModel):
        ok: bool

    # A one-field schema finishes well within the budget, so the stream ends in response.completed.
    with client.responses.stream(model=model, input="Is water wet? Answer as JSON.", text_format=Answer,
                                 max_output_tokens=30, temperature=0) as s:
        deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
        final = s.get_final_response()
    assert final.status == "completed"
    assert final.output_text == "".join(deltas)
    assert isinstance(final.output_parsed, Answer)


def test_function_tool_round_trip(client, model):
    r = ask(client, model, input="What is the weather in Paris?", tools=[WEATHER], tool_choice="required",
            parallel_tool_calls=False, max_output_tokens=60)
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls and r.status == "completed"
    call = calls[0]
    assert call.name == "get_weather" and call.call_id.startswith("call_") and call.id.startswith("fc_")
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    # Feed the result back: the call and its output continue the conversation.
    follow = ask(client, model, previous_response_id=r.id, tools=[WEATHER], max_output_tokens=12,
                 input=[{"type": "function_call_output", "call_id": call.call_id, "output": json.dumps({"temp_c": 18})}])
    assert follow.previous_response_id == r.id
    assert follow.usage.input_tokens > r.usage.input_tokens
    # The same history sent explicitly, without previous_response_id, gives the same prompt.
    explicit = ask(client, model, tools=[WEATHER], max_output_tokens=12, input=[
        {"role": "user", "content": "What is the weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": json.dumps({"temp_c": 18})},
    ])
    assert explicit.usage.input_tokens == follow.usage.input_tokens
    assert explicit.output_text == follow.output_text


def test_named_tool_choice_and_streamed_call_events(client, model):
    events = list(ask(client, model, input="Weather in Rome?", tools=[WEATHER], max_output_tokens=60,
                      tool_choice={"type": "function", "name": "get_weather"}, stream=True))
    types = [e.type for e in events]
    assert types == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.function_call_arguments.delta", "response.function_call_arguments.done",
                     "response.output_item.done", "response.completed"]
    added, delta, done, item_done = events[2:6]
    assert added.item.type == "function_call" and added.item.arguments == ""
    assert delta.item_id == done.item_id == added.item.id
    assert done.arguments == delta.delta == item_done.item.arguments
    jsonschema.validate(json.loads(done.arguments), WEATHER["parameters"])
    assert events[-1].response.output[0].call_id == added.item.call_id


def test_json_schema_text_format(client, model):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                               "age": {"type": "integer", "minimum": 0, "maximum": 150}},
              "required": ["name", "age"], "additionalProperties": False}
    r = ask(client, model, input="Invent a person as JSON.", max_output_tokens=40,
            text={"format": {"type": "json_schema", "name": "person", "schema": schema, "strict": True}})
    assert r.text.format.type == "json_schema"
    jsonschema.validate(json.loads(r.output_text), schema)


def test_sdk_parse_helper_with_pydantic(client, model):
    class City(pydantic.BaseModel):
        name: str = pydantic.Field(max_length=20)
        population: int = pydantic.Field(ge=0, le=10**9)

    r = client.responses.parse(model=model, input="Describe a city as JSON.", text_format=City, max_output_tokens=60, temperature=0)
    assert r.status == "completed"
    assert isinstance(r.output_parsed, City)


def test_previous_response_id_continues_the_conversation(client, model):
    first = ask(client, model, input="My name is Ada.", instructions="Be brief.")
    second = ask(client, model, input="What is my name?", previous_response_id=first.id)
    # The second prompt holds the first turn (input and output) plus the new question.
    alone = ask(client, model, input="What is my name?")
    assert second.usage.input_tokens > alone.usage.input_tokens + first.usage.output_tokens
    items = client.responses.input_items.list(second.id, order="asc").data
    texts = [i.content[0].text for i in items]
    assert texts == ["My name is Ada.", first.output_text, "What is my name?"]
    assert [i.role for i in items] == ["user", "assistant", "user"]
    newest_first = client.responses.input_items.list(second.id).data
    assert [i.id for i in newest_first] == [i.id for i in reversed(items)]
    page = client.responses.input_items.list(second.id, order="asc", limit=2)
    assert len(page.data) == 2 and page.has_more
    rest = client.responses.input_items.list(second.id, order="asc", after=page.data[-1].id).data
    assert [i.id for i in rest] == [items[2].id]


def test_retrieve_delete_and_store_false(client, model):
    r = ask(client, model)
    got = client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text and got.usage.output_tokens == r.usage.output_tokens
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(r.id)
    unstored = ask(client, model, store=False)
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    with pytest.raises(openai.NotFoundError) as e:
        ask(client, model, previous_response_id=unstored.id)
    assert e.value.body["param"] == "previous_response_id"
    assert e.value.body["code"] == "previous_response_not_found"


def test_stored_responses_survive_a_restart(fresh_server):
    c, m = fresh_server.client, fresh_server.model
    r = ask(c, m, input="Remember the number 7.")
    fresh_server.restart()
    c = fresh_server.client
    assert c.responses.retrieve(r.id).output_text == r.output_text
    follow = ask(c, m, input="Which number?", previous_response_id=r.id)
    assert len(c.responses.input_items.list(follow.id).data) == 3


def test_logprobs_on_output_text(client, model):
    r = ask(client, model, max_output_tokens=4, include=["message.output_text.logprobs"], top_logprobs=2)
    lps = r.output[0].content[0].logprobs
    assert len(lps) == 4
    assert "".join(t.token for t in lps) == r.output_text
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in lps)


@pytest.mark.parametrize(
    "kw,param,code",
    [
        ({"input": []}, "input", "empty_array"),
        ({"input": [{"type": "bogus"}]}, "input[0].type", "invalid_value"),
        ({"input": [{"role": "wizard", "content": "hi"}]}, "input[0].role", "invalid_value"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id", "missing_required_parameter"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type", "unsupported_value"),
        ({"temperature": 5}, "temperature", "decimal_above_max_value"),
        ({"temperature": "warm"}, "temperature", "invalid_type"),
        ({"input": 5}, "input", "invalid_type"),
        ({"metadata": {"k": 1}}, "metadata", "invalid_value"),
        ({"truncation": "sometimes"}, "truncation", "invalid_value"),
        ({"max_output_tokens": 0}, "max_output_tokens", "integer_below_min_value"),
        ({"text": {"format": {"type": "json_schema", "name": "x", "strict": True,
                              "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}}}, "text.format", None),
        ({"background": True}, "background", "unsupported_parameter"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,!!"}]}]},
         "input[0].content[0]", "invalid_image_url"),
    ],
)
def test_bad_requests_are_400_in_openai_format(client, model, kw, param, code):
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, model, **kw)
    assert e.value.status_code == 400
    assert e.value.body["type"] == "invalid_request_error"
    assert e.value.body["param"] == param
    assert e.value.body["code"] == code
    assert e.value.body["message"]


def test_images_are_refused_without_a_vision_encoder(client, model):
    png = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, model, input=[{"role": "user", "content": [
            {"type": "input_text", "text": "What is this?"}, {"type": "input_image", "image_url": png, "detail": "auto"}]}])
    assert e.value.body["code"] == "image_input_not_supported"
    assert e.value.body["param"] == "input[0].content[1]"
    assert "vision" in e.value.body["message"]


def test_unknown_ids_are_404(client):
    for call in (lambda: client.responses.retrieve("resp_nope"), lambda: client.responses.input_items.list("resp_nope"),
                 lambda: client.responses.delete("resp_nope")):
        with pytest.raises(openai.NotFoundError) as e:
            call()
        assert e.value.body["code"] == "response_not_found"


def test_responses_in_a_batch(client, model):
    import io
    import time

    lines = [
        {"custom_id": "ok", "method": "POST", "url": "/v1/responses",
         "body": {"model": model, "input": "Name a fish.", "max_output_tokens": 5, "temperature": 0}},
        {"custom_id": "bad", "method": "POST", "url": "/v1/responses",
         "body": {"model": model, "input": "Hi", "max_output_tokens": 0}},
    ]
    f = client.files.create(file=("r.jsonl", io.BytesIO("".join(json.dumps(l) + "\n" for l in lines).encode()), "application/jsonl"),
                            purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/responses", completion_window="24h")
    deadline = time.time() + 120
    while b.status not in ("completed", "failed", "cancelled") and time.time() < deadline:
        time.sleep(0.2)
        b = client.batches.retrieve(b.id)
    assert b.status == "completed"
    assert b.request_counts.completed == 1 and b.request_counts.failed == 1
    out = [json.loads(l) for l in client.files.content(b.output_file_id).read().splitlines()]
    body = out[0]["response"]["body"]
    assert out[0]["custom_id"] == "ok" and body["object"] == "response"
    assert body["output"][0]["content"][0]["text"] == ask(client, model, input="Name a fish.", max_output_tokens=5).output_text
    errs = [json.loads(l) for l in client.files.content(b.error_file_id).read().splitlines()]
    assert errs[0]["custom_id"] == "bad" and errs[0]["response"]["status_code"] == 400
