"""response_format json_object / json_schema: token-level constrained decoding, so the output
always parses and validates, even from a small base model at high temperature."""
import json

import jsonschema
import openai
import pydantic
import pytest

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "role": {"enum": ["captain", "sailor", "cook"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
        "ship": {"anyOf": [{"type": "string", "maxLength": 20}, {"type": "null"}]},
    },
    "required": ["name", "age", "role", "tags", "ship"],
    "additionalProperties": False,
}


def ask(client, model, rf, n=1, temperature=0.0, **kw):
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Describe a sailor as JSON."}],
        response_format=rf,
        max_tokens=kw.pop("max_tokens", 160),
        temperature=temperature,
        n=n,
        seed=11,
        **kw,
    )


def test_json_schema_strict_always_validates(client, model):
    rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    for temperature in (0.0, 1.3):
        r = ask(client, model, rf, n=2, temperature=temperature)
        for c in r.choices:
            assert c.finish_reason == "stop", c.message.content
            doc = json.loads(c.message.content)
            jsonschema.validate(doc, PERSON)


def test_json_object_always_parses(client, model):
    r = ask(client, model, {"type": "json_object"}, n=2, temperature=1.0, max_tokens=60)
    for c in r.choices:
        if c.finish_reason == "stop":
            assert isinstance(json.loads(c.message.content), dict)
        else:
            # Cut by max_tokens: still a valid JSON prefix of an object.
            assert c.message.content.startswith("{")


def test_json_object_requires_the_word_json(client, model):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], response_format={"type": "json_object"})
    assert "json" in e.value.body["message"]


def test_strict_schema_rules_are_enforced(client, model):
    loose = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, model, {"type": "json_schema", "json_schema": {"name": "x", "schema": loose, "strict": True}})
    assert "additionalProperties" in e.value.body["message"]
    # Non-strict schemas are accepted and still honoured.
    r = ask(client, model, {"type": "json_schema", "json_schema": {"name": "x", "schema": {**loose, "properties": {"a": {"type": "string", "maxLength": 20}}}}})
    jsonschema.validate(json.loads(r.choices[0].message.content), loose)


def test_invalid_schema_is_a_400(client, model):
    bad = {"type": "object", "properties": {"a": {"type": "no-such-type"}}, "required": ["a"], "additionalProperties": False}
    with pytest.raises(openai.BadRequestError):
        ask(client, model, {"type": "json_schema", "json_schema": {"name": "x", "schema": bad, "strict": True}})


class Step(pydantic.BaseModel):
    explanation: str = pydantic.Field(max_length=40)
    output: int = pydantic.Field(ge=-1000, le=1000)


class Solution(pydantic.BaseModel):
    steps: list[Step] = pydantic.Field(max_length=2)
    final_answer: int = pydantic.Field(ge=-1000, le=1000)


def test_sdk_parse_helper_with_pydantic(client, model):
    r = client.chat.completions.parse(
        model=model,
        messages=[{"role": "user", "content": "Solve 8x + 7 = -23 step by step."}],
        response_format=Solution,
        max_tokens=160,
        temperature=0,
    )
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(msg.parsed, Solution)


def test_structured_stream_concatenates_to_valid_json(client, model):
    rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    chunks = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "A sailor, as JSON."}], response_format=rf, max_tokens=160, temperature=0.9, seed=4, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    jsonschema.validate(json.loads(text), PERSON)
