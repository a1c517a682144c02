"""modal.Secret through the real client and the `modal secret` CLI."""

import pytest

import modal
from modal.exception import AlreadyExistsError, NotFoundError

from conftest import unique


def test_create_lookup_info_update_delete(ferry):
    name = unique("s")
    modal.Secret.objects.create(name, {"API_KEY": "abc", "OTHER": "1"})
    with pytest.raises(AlreadyExistsError):
        modal.Secret.objects.create(name, {"API_KEY": "zzz"})
    s = modal.Secret.from_name(name)
    info = s.info()
    assert info.name == name and info.created_at is not None
    s.update({"NEW": "2"})
    again = modal.Secret.from_name(name, required_keys=["API_KEY", "NEW"])
    again.hydrate()
    assert name in [x.name for x in modal.Secret.objects.list()]
    modal.Secret.objects.delete(name)
    with pytest.raises(NotFoundError):
        modal.Secret.from_name(name).hydrate()


def test_required_keys_missing(ferry):
    name = unique("s")
    modal.Secret.objects.create(name, {"A": "1"})
    with pytest.raises(NotFoundError, match="B"):
        modal.Secret.from_name(name, required_keys=["A", "B"]).hydrate()


def test_from_dict_is_anonymous(ferry):
    s = modal.Secret.from_dict({"X": "y"})
    s.hydrate()
    assert s.object_id.startswith("st-")
    assert all(x.object_id != s.object_id for x in modal.Secret.objects.list())


def test_values_are_encrypted_at_rest(ferry):
    name = unique("s")
    marker = "plaintext-marker-" + name
    modal.Secret.objects.create(name, {"TOKEN": marker})
    for f in ferry.data_dir.iterdir():
        if f.name.startswith("ferry.db"):
            assert marker.encode() not in f.read_bytes(), f"secret value readable in {f.name}"


def test_cli_create_list_delete(ferry):
    name = unique("cli-secret")
    out = ferry.modal("secret", "create", name, "FOO=bar", "BAZ=qux")
    assert out.returncode == 0, out.stderr + out.stdout
    out = ferry.modal("secret", "list", "--json")
    assert out.returncode == 0, out.stderr
    assert name in out.stdout
    out = ferry.modal("secret", "create", name, "FOO=again")
    assert out.returncode != 0
    assert "already exists" in (out.stdout + out.stderr)
    out = ferry.modal("secret", "create", name, "FOO=new", "--force")
    assert out.returncode == 0, out.stderr + out.stdout
    out = ferry.modal("secret", "delete", name, "--yes")
    assert out.returncode == 0, out.stderr + out.stdout
    assert name not in ferry.modal("secret", "list", "--json").stdout
