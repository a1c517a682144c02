"""/v1/moderations: the 13 OpenAI categories from the offensive-language classifier plus the
keyword lexicon (see docs/llm.md for what each category is backed by)."""
import openai
import pytest

CATEGORIES = {
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
    "self-harm", "self-harm/instructions", "self-harm/intent", "sexual", "sexual/minors", "violence", "violence/graphic",
}


def test_result_shape_and_benign_text(client):
    r = client.moderations.create(model="omni-moderation-latest", input="What a lovely day for a walk by the sea.")
    assert r.id.startswith("modr-") and r.model == "omni-moderation-latest"
    (res,) = r.results
    cats = res.categories.model_dump(by_alias=True)
    scores = res.category_scores.model_dump(by_alias=True)
    applied = res.category_applied_input_types.model_dump(by_alias=True)
    assert set(cats) == set(scores) == set(applied) == CATEGORIES
    assert res.flagged is False and not any(cats.values())
    assert all(0 <= s <= 1 for s in scores.values())
    assert all(v == ["text"] for v in applied.values())


def test_flags_follow_the_content(client):
    texts = ["you are a stupid worthless idiot", "I want to kill myself", "Please pass the salt."]
    r = client.moderations.create(input=texts)
    rude, sh, fine = r.results
    assert rude.flagged and rude.categories.harassment and rude.category_scores.harassment > 0.9
    assert sh.flagged and sh.categories.self_harm and sh.categories.self_harm_intent
    assert not fine.flagged


def test_image_inputs_are_refused(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.moderations.create(input=[{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}])
    assert "Image moderation is not supported" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        client.moderations.create(input=[])
