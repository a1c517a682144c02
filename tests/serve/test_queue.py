"""modal.Queue through the real client: FIFO, partitions, TTLs, blocking, limits."""

import queue
import threading
import time

import pytest

import modal
from modal.exception import InvalidError, NotFoundError

from conftest import unique


def new_queue():
    return modal.Queue.from_name(unique("q"), create_if_missing=True)


def test_fifo_put_get_many(ferry):
    q = new_queue()
    q.put(1)
    q.put_many([2, 3, 4])
    assert q.len() == 4
    assert q.get() == 1
    assert q.get_many(2) == [2, 3]
    assert q.get_many(10) == [4]
    assert q.get(block=False) is None
    assert q.get_many(3, block=False) == []


def test_partitions_are_independent(ferry):
    q = new_queue()
    q.put("default")
    q.put("a1", partition="a")
    q.put("a2", partition="a")
    q.put("b1", partition="b")
    assert q.len() == 1
    assert q.len(partition="a") == 2
    assert q.len(total=True) == 4
    assert q.get(partition="b") == "b1"
    assert q.get(partition="a") == "a1"
    assert q.get() == "default"
    q.clear(partition="a")
    assert q.len(partition="a") == 0
    q.put("x")
    q.put("y", partition="c")
    q.clear(all=True)
    assert q.len(total=True) == 0


def test_iterate_does_not_consume(ferry):
    q = new_queue()
    q.put_many([1, 2, 3])
    assert list(q.iterate()) == [1, 2, 3]
    assert q.len() == 3

    def later():
        time.sleep(0.5)
        q.put(4)

    t = threading.Thread(target=later)
    t.start()
    assert list(q.iterate(item_poll_timeout=3.0)) == [1, 2, 3, 4]
    t.join()


def test_blocking_get_wakes_on_put(ferry):
    q = new_queue()

    def later():
        time.sleep(0.7)
        q.put("hello")

    t = threading.Thread(target=later)
    start = time.time()
    t.start()
    assert q.get(timeout=10) == "hello"
    waited = time.time() - start
    t.join()
    assert 0.5 < waited < 9


def test_get_timeout_raises_empty(ferry):
    q = new_queue()
    start = time.time()
    with pytest.raises(queue.Empty):
        q.get(timeout=1.0)
    assert time.time() - start >= 0.9


def test_full_partition_is_resource_exhausted(ferry):
    q = new_queue()
    q.put_many(list(range(5000)), partition="p")
    with pytest.raises(queue.Full):
        q.put(5000, partition="p", block=False)
    with pytest.raises(queue.Full):
        q.put(5000, partition="p", timeout=1.0)
    assert q.len(partition="p") == 5000
    # Other partitions are unaffected.
    q.put("ok")
    assert q.get() == "ok"


def test_item_too_large_is_refused(ferry):
    q = new_queue()
    with pytest.raises(InvalidError, match="too large"):
        q.put(b"x" * (1024 * 1024 + 100))


def test_partition_ttl_expires(ferry):
    q = new_queue()
    q.put("short", partition="ttl", partition_ttl=1)
    q.put("long", partition="keep")
    assert q.len(partition="ttl") == 1
    time.sleep(1.5)
    assert q.len(partition="ttl") == 0
    assert q.get(partition="ttl", block=False) is None
    assert q.len(partition="keep") == 1


def test_invalid_partition_key(ferry):
    q = new_queue()
    with pytest.raises(InvalidError):
        q.put(1, partition="k" * 65)


def test_named_queue_lifecycle(ferry):
    name = unique("q")
    modal.Queue.objects.create(name)
    q = modal.Queue.from_name(name)
    q.put(1)
    assert modal.Queue.from_id(q.object_id).get() == 1
    assert name in [x.name for x in modal.Queue.objects.list()]
    modal.Queue.objects.delete(name)
    with pytest.raises(NotFoundError):
        q.put(2)


def test_ephemeral_queue(ferry):
    with modal.Queue.ephemeral() as q:
        q.put_many(["a", "b"])
        assert q.get_many(2) == ["a", "b"]
