"""`Image.run_function` build steps with the real client: the function runs once in a container
of the parent image with its arguments and secrets, its writes become the layer, an unchanged
step is a cache hit, a raising function fails the build with its message."""

import json
import uuid
from pathlib import Path

APP = str(Path(__file__).parent / "apps" / "run_function.py")


def result_of(out) -> dict:
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, text
    return json.loads(lines[-1][len("RESULT "):])


def test_run_function_bakes_a_layer_and_is_cached(runner):
    token = uuid.uuid4().hex[:12]
    first = runner.modal("run", APP, timeout=600, FERRY_RF_TOKEN=token)
    got = result_of(first)
    assert got["word"] == f"word-{token}" and got["secret"] == f"from-secret-{token}", got
    # The function's output is part of the build logs the client shows.
    assert f"baking word-{token}" in first.stdout + first.stderr
    shown = [line for line in (first.stdout + first.stderr).splitlines() if not line.startswith("RESULT ")]
    assert not any(f"from-secret-{token}" in line for line in shown), shown

    # Unchanged step: the same layer, the function does not run again.
    second = runner.modal("run", APP, timeout=600, FERRY_RF_TOKEN=token)
    again = result_of(second)
    assert again == got, (got, again)
    assert f"baking word-{token}" not in second.stdout + second.stderr

    # force_build runs it again: a new stamp.
    forced = result_of(runner.modal("run", APP, timeout=600, FERRY_RF_TOKEN=token, MODAL_FORCE_BUILD="1"))
    assert forced["word"] == got["word"] and int(forced["stamp"]) > int(got["stamp"]), (got, forced)

    # Other arguments are another step.
    other = uuid.uuid4().hex[:12]
    changed = result_of(runner.modal("run", APP, timeout=600, FERRY_RF_TOKEN=other))
    assert changed["word"] == f"word-{other}" and changed["stamp"] != got["stamp"], changed


def test_raising_build_function_fails_the_run(runner):
    token = uuid.uuid4().hex[:12]
    out = runner.modal("run", APP, timeout=600, FERRY_RF_TOKEN=token, FERRY_RF_FAIL="1")
    text = out.stdout + out.stderr
    assert out.returncode != 0, text
    assert f"bake failed for word-{token}" in text and "RuntimeError" in text, text
    assert "Image build" in text and "failed" in text, text
    assert "RESULT" not in out.stdout, text
