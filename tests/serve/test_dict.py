"""modal.Dict through the real client: every Dict RPC, limits and errors."""

import pytest

import modal
from modal.exception import AlreadyExistsError, InvalidError, NotFoundError

from conftest import unique


def test_put_get_contains_len_pop(ferry):
    d = modal.Dict.from_name(unique("d"), create_if_missing=True)
    d["a"] = 1
    d.put(("tuple", 2), {"nested": [1, 2, 3]})
    assert d["a"] == 1
    assert d.get(("tuple", 2)) == {"nested": [1, 2, 3]}
    assert d.get("missing", "default") == "default"
    assert "a" in d and d.contains("a") and not d.contains("zzz")
    assert d.len() == 2
    assert d.pop("a") == 1
    assert d.pop("a", None) is None
    with pytest.raises(KeyError):
        d["a"]
    with pytest.raises(KeyError):
        d.pop("a")
    assert d.len() == 1


def test_update_and_skip_if_exists(ferry):
    d = modal.Dict.from_name(unique("d"), create_if_missing=True)
    d.update({"x": 1, "y": 2}, z=3)
    assert sorted(d.keys()) == ["x", "y", "z"]
    assert d.put("x", 100, skip_if_exists=True) is False
    assert d["x"] == 1
    assert d.put("new", 5, skip_if_exists=True) is True
    assert d.put("x", 7) is True
    assert d["x"] == 7


def test_contents_stream_all_pages(ferry):
    d = modal.Dict.from_name(unique("d"), create_if_missing=True)
    d.update({f"k{i}": i for i in range(1234)})
    assert d.len() == 1234
    assert sorted(d.keys()) == sorted(f"k{i}" for i in range(1234))
    assert sorted(d.values()) == list(range(1234))
    assert dict(d.items()) == {f"k{i}": i for i in range(1234)}
    d.clear()
    assert d.len() == 0 and list(d.items()) == []


def test_large_value_roundtrip(ferry):
    d = modal.Dict.from_name(unique("d"), create_if_missing=True)
    blob = bytes(range(256)) * 40_000  # ~10 MiB
    d["big"] = blob
    assert d["big"] == blob


def test_lookup_missing_and_create_existing(ferry):
    name = unique("d")
    with pytest.raises(NotFoundError, match=name):
        modal.Dict.from_name(name).hydrate()
    modal.Dict.objects.create(name)
    with pytest.raises(AlreadyExistsError):
        modal.Dict.objects.create(name)
    modal.Dict.objects.create(name, allow_existing=True)
    assert name in [x.name for x in modal.Dict.objects.list()]


def test_from_id_info_and_delete(ferry):
    name = unique("d")
    d = modal.Dict.from_name(name, create_if_missing=True)
    d["k"] = "v"
    same = modal.Dict.from_id(d.object_id)
    assert same["k"] == "v"
    assert d.info().name == name
    modal.Dict.objects.delete(name)
    with pytest.raises(NotFoundError):
        d.get("k")
    with pytest.raises(NotFoundError):
        modal.Dict.objects.delete(name)
    modal.Dict.objects.delete(name, allow_missing=True)


def test_list_pages_newest_first(ferry):
    names = [unique(f"page{i}") for i in range(5)]
    for n in names:
        modal.Dict.objects.create(n)
    listed = [x.name for x in modal.Dict.objects.list(max_objects=3)]
    assert listed == list(reversed(names))[:3]


def test_ephemeral_dict_reclaimed_when_heartbeats_stop(fresh_ferry):
    server = fresh_ferry("--ephemeral-ttl-secs", "2")
    out = server.python(
        """
import time, modal
from modal.exception import NotFoundError
with modal.Dict.ephemeral() as d:
    d["k"] = "v"
    assert d["k"] == "v"
    dict_id = d.object_id
deadline = time.time() + 20
while time.time() < deadline:
    try:
        modal.Dict.from_id(dict_id).hydrate()
    except NotFoundError:
        print("reclaimed")
        break
    time.sleep(0.5)
"""
    )
    assert out.returncode == 0, out.stderr
    assert "reclaimed" in out.stdout


def test_invalid_names_and_ids(ferry):
    with pytest.raises(InvalidError):
        modal.Dict.from_name("bad name!", create_if_missing=True).hydrate()
    with pytest.raises((InvalidError, NotFoundError)):
        modal.Dict.from_id("di-doesnotexist000000000").hydrate()
