"""The `modal dict`, `modal queue`, `modal app` and `modal environment` CLIs against Ferry."""

import json

import modal

from conftest import unique


def ok(out):
    assert out.returncode == 0, f"exit {out.returncode}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    return out.stdout


def test_dict_cli(ferry):
    name = unique("cli-dict")
    d = modal.Dict.from_name(name, create_if_missing=True)
    d.update({"alpha": 1, "beta": "two"})
    assert name in ok(ferry.modal("dict", "list"))
    assert "two" in ok(ferry.modal("dict", "get", name, "beta"))
    items = ok(ferry.modal("dict", "items", name, "--json"))
    assert "alpha" in items and "beta" in items
    ok(ferry.modal("dict", "clear", name, "--yes"))
    assert d.len() == 0
    ok(ferry.modal("dict", "delete", name, "--yes"))
    assert name not in ok(ferry.modal("dict", "list"))


def test_queue_cli(ferry):
    name = unique("cli-queue")
    ok(ferry.modal("queue", "create", name))
    q = modal.Queue.from_name(name)
    q.put_many(["first", "second"])
    q.put("p", partition="part")
    listing = json.loads(ok(ferry.modal("queue", "list", "--json")))
    row = next(r for r in listing if r["name"] == name)
    assert row["total_size"] == 3 and row["partitions"] == 2
    assert ok(ferry.modal("queue", "len", name)).strip() == "2"
    assert ok(ferry.modal("queue", "len", name, "--total")).strip() == "3"
    peek = ok(ferry.modal("queue", "peek", name, "2"))
    assert "first" in peek and "second" in peek
    assert q.len() == 2, "peek must not consume"
    ok(ferry.modal("queue", "clear", name, "--yes"))
    assert q.len() == 0
    ok(ferry.modal("queue", "delete", name, "--yes"))
    assert name not in ok(ferry.modal("queue", "list"))


def test_environment_cli(ferry):
    assert "main" in ok(ferry.modal("environment", "list"))
    env = unique("env")
    ok(ferry.modal("environment", "create", env))
    assert env in ok(ferry.modal("environment", "list"))
    name = unique("d")
    modal.Dict.from_name(name, environment_name=env, create_if_missing=True)["k"] = 1
    assert name in ok(ferry.modal("dict", "list", "--env", env))
    assert name not in ok(ferry.modal("dict", "list"))


def test_app_list_shows_created_app(ferry):
    app = modal.App(unique("listed"))
    with app.run():
        app_id = app.app_id
        assert app_id in ok(ferry.modal("app", "list", "--json"))
    listing = json.loads(ok(ferry.modal("app", "list", "--json")))
    row = next(r for r in listing if r["app_id"] == app_id)
    assert row["state"] == "stopped"


def test_app_stop_and_logs_by_name(ferry):
    name = unique("deployed")
    app = modal.App(name)
    app.deploy()
    listing = json.loads(ok(ferry.modal("app", "list", "--json")))
    row = next(r for r in listing if r["app_id"] == app.app_id)
    assert row["state"] == "deployed"
    ok(ferry.modal("app", "stop", name, "--yes"))
    out = ferry.modal("app", "stop", name, "--yes")
    assert "already stopped" in out.stdout + out.stderr
    # Following the logs of a stopped app returns once the stream says the app is done.
    ok(ferry.modal("app", "logs", app.app_id, timeout=30))


def test_token_set_profile_list_token_info_and_dashboard(ferry, tmp_path):
    import subprocess
    from pathlib import Path

    creds = ferry.client_env()
    config = str(tmp_path / "fresh.toml")
    # A new user points the client at Ferry with `modal token set`: the profile is named after
    # the workspace the server reports. Only the server URL comes from the environment.
    env = {k: v for k, v in ferry.env(MODAL_CONFIG_PATH=config).items() if k not in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET")}
    cli = str(Path(__import__("sys").executable).parent / "modal")

    def run(*args):
        return subprocess.run([cli, *args], env=env, capture_output=True, text=True, timeout=120)

    out = ok(run("token", "set", "--token-id", creds["MODAL_TOKEN_ID"], "--token-secret", creds["MODAL_TOKEN_SECRET"]))
    assert "profile ferry" in " ".join(out.split())
    text = open(config).read()
    assert "[ferry]" in text and creds["MODAL_TOKEN_ID"] in text
    profiles = ok(run("profile", "list"))
    assert "ferry" in profiles and "Unknown" not in profiles
    info = ok(run("token", "info"))
    assert creds["MODAL_TOKEN_ID"] in info and "Workspace: ferry" in " ".join(info.split())
    assert creds["MODAL_TOKEN_SECRET"] not in info
    bad = ferry.modal("token", "info", MODAL_TOKEN_SECRET="not-the-secret")
    assert bad.returncode != 0
    dash = ferry.modal("dashboard", BROWSER="true")
    assert dash.returncode == 0, dash.stderr
    assert "/apps" in dash.stdout
