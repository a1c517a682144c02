"""Exports the offensive-language classifier shipped in the PyPI package alt-profanity-check
(TF-IDF word unigrams -> LinearSVC, sigmoid-calibrated over 5 folds) to plain JSON that
Ferry's moderation endpoint evaluates in Rust.

Usage: .venv/bin/python tools/llm/export_moderation.py models/moderation/offensive.json
"""
import json
import sys
from importlib.metadata import version
from pathlib import Path

from profanity_check import profanity_check as pc


def main(out: Path) -> None:
    vec, model = pc.vectorizer, pc.model
    params = vec.get_params()
    assert params["analyzer"] == "word" and params["ngram_range"] == (1, 1), params
    assert params["lowercase"] and params["norm"] == "l2" and not params["sublinear_tf"], params
    folds = []
    for c in model.calibrated_classifiers_:
        (cal,) = c.calibrators
        folds.append({
            "coef": [float(x) for x in c.estimator.coef_[0]],
            "intercept": float(c.estimator.intercept_[0]),
            "a": float(cal.a_),
            "b": float(cal.b_),
        })
    doc = {
        "source": f"alt-profanity-check {version('alt-profanity-check')}",
        "token_pattern": params["token_pattern"],
        "vocabulary": {k: int(v) for k, v in vec.vocabulary_.items()},
        "idf": [float(x) for x in vec.idf_],
        "folds": folds,
        # Reference probabilities, checked by Ferry's unit test of the Rust port.
        "checks": {t: float(p) for t, p in zip(CHECKS, pc.predict_prob(CHECKS))},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(out)
    print(f"wrote {out} ({len(doc['vocabulary'])} terms, {len(folds)} folds)")


CHECKS = [
    "you are an idiot",
    "have a nice day",
    "I will find you, you stupid piece of garbage",
    "The weather in Paris is mild in spring.",
]

if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "models/moderation/offensive.json"))
