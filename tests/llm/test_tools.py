"""Tool calling: tool_choice none/auto/required/named, parallel calls, arguments constrained to
the tool's JSON schema, streaming tool-call deltas, and tool results fed back."""
import json

import jsonschema
import pytest

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a timezone.",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string", "maxLength": 30}}, "required": ["tz"]},
    },
}
TOOLS = [WEATHER, TIME]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris and the time in Tokyo?"}]


def call(client, model, **kw):
    kw.setdefault("messages", ASK)
    # Up to four calls of ~25 tokens each fit.
    kw.setdefault("max_tokens", 160)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=model, tools=TOOLS, **kw)


def check_calls(choice, allowed=None):
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls
    assert len({c.id for c in calls}) == len(calls)
    for c in calls:
        assert c.type == "function"
        assert c.function.name in (allowed or SCHEMAS)
        jsonschema.validate(json.loads(c.function.arguments), SCHEMAS[c.function.name])
    return calls


def test_required_always_produces_valid_calls(client, model):
    check_calls(call(client, model, tool_choice="required").choices[0])
    # At temperature 1.2 calls run long (~140 tokens each here): room for four of them.
    for ch in call(client, model, tool_choice="required", n=2, temperature=1.2, seed=9, max_tokens=320).choices:
        check_calls(ch)


def test_named_tool_choice(client, model):
    r = call(client, model, tool_choice={"type": "function", "function": {"name": "get_time"}})
    calls = check_calls(r.choices[0], allowed=["get_time"])
    assert len(calls) == 1


def test_parallel_calls_and_the_switch_off(client, model):
    # The question asks for two things; with parallel calls allowed (up to four) the model makes several.
    r = call(client, model, tool_choice="required", temperature=0.7, seed=1, n=2)
    counts = [len(check_calls(ch)) for ch in r.choices]
    assert max(counts) >= 2
    r = call(client, model, tool_choice="required", parallel_tool_calls=False, temperature=1.0, seed=1, n=2)
    assert all(len(check_calls(ch)) == 1 for ch in r.choices)


def test_none_never_calls(client, model):
    r = call(client, model, tool_choice="none", max_tokens=12)
    c = r.choices[0]
    assert c.message.tool_calls is None
    assert c.message.content
    assert c.finish_reason in ("stop", "length")


def test_auto_gives_text_or_valid_calls(client, model):
    r = call(client, model, tool_choice="auto", n=3, temperature=1.0, seed=2, max_tokens=60)
    for ch in r.choices:
        if ch.message.tool_calls:
            check_calls(ch)
        else:
            assert ch.message.content and not ch.message.content.lstrip().startswith("<tool_call>")


def test_tool_results_continue_the_conversation(client, model):
    first = call(client, model, tool_choice="required", parallel_tool_calls=False)
    calls = first.choices[0].message.tool_calls
    messages = ASK + [first.choices[0].message.model_dump(exclude_none=True)] + [
        {"role": "tool", "tool_call_id": c.id, "content": json.dumps({"result": "sunny, 21 C"})} for c in calls
    ]
    r = call(client, model, messages=messages, tool_choice="none", max_tokens=16)
    assert r.choices[0].message.content
    # The calls and their results are in the prompt.
    baseline = call(client, model, tool_choice="none", max_tokens=1).usage.prompt_tokens
    assert r.usage.prompt_tokens > baseline + 20 * len(calls)


def test_streamed_tool_calls_assemble_to_valid_calls(client, model):
    stream = call(client, model, tool_choice="required", stream=True, temperature=0.8, seed=5)
    calls = {}
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        ch = chunk.choices[0]
        for d in ch.delta.tool_calls or []:
            c = calls.setdefault(d.index, {"id": None, "name": None, "arguments": ""})
            if d.id:
                c["id"] = d.id
            if d.function and d.function.name:
                c["name"] = d.function.name
            if d.function and d.function.arguments:
                c["arguments"] += d.function.arguments
        finish = ch.finish_reason or finish
    assert finish == "tool_calls"
    assert calls
    for c in calls.values():
        assert c["id"].startswith("call_")
        jsonschema.validate(json.loads(c["arguments"]), SCHEMAS[c["name"]])


@pytest.mark.parametrize(
    "kw",
    [
        {"tool_choice": {"type": "function", "function": {"name": "nope"}}},
        {"tool_choice": "sometimes"},
    ],
)
def test_bad_tool_requests(client, model, kw):
    import openai

    with pytest.raises(openai.BadRequestError) as e:
        call(client, model, **kw)
    assert e.value.body["param"] == "tool_choice"
