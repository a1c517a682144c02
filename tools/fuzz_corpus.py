#!/usr/bin/env python3
"""Builds the fuzz seed corpus (`crates/fuzz/corpus/<Rpc>/<hash>.bin`) from real client traffic.

Two sources, both real requests of the pinned `modal` client:
  * recorded traces (`--traces DIR`: JSON lines with the RPC name and the request in protobuf
    text format; requests the trace cut short are skipped), and
  * a live capture (`--capture`): the real SDK and CLI run a workload against a `ferry serve`
    this script starts (FERRY_BIN, a temporary data dir, loopback only), with grpclib's
    `Stream.send_message` wrapped to record every request message as sent.

Each file is one encoded request message; the fuzz harness (`crates/fuzz`) and the
protocol-level fuzzer (`tests/serve/test_security.py`) mutate them.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "crates" / "fuzz" / "corpus"
# Seeds kept per RPC: mutation explores from there; more only slows every fuzz round down.
MAX_PER_RPC = 8

# Prepended to the client code run under capture: records (method, encoded request) pairs.
CAPTURE_PRELUDE = r'''
import atexit, json, os, grpclib.client
_seen = []
_orig = grpclib.client.Stream.send_message
async def _send_message(self, message, **kw):
    try:
        _seen.append([self._method_name.rsplit("/", 1)[-1], message.SerializeToString().hex()])
    except Exception:
        pass
    return await _orig(self, message, **kw)
grpclib.client.Stream.send_message = _send_message
@atexit.register
def _dump():
    with open(os.environ["FERRY_CAPTURE_FILE"], "a") as f:
        for m, h in _seen:
            f.write(json.dumps([m, h]) + "\n")
'''

SDK_WORKLOAD = r'''
import modal
d = modal.Dict.from_name("fuzz-seed-dict", create_if_missing=True)
d["a"] = 1; d.put("b", {"x": [1, 2]}); d.get("a"); "a" in d; d.len(); list(d.items()); d.pop("b"); d.update({"c": 3})
q = modal.Queue.from_name("fuzz-seed-queue", create_if_missing=True)
q.put(1); q.put_many([2, 3]); q.get(); q.get_many(2, timeout=1); q.len(); q.put(4, partition="p")
v = modal.Volume.from_name("fuzz-seed-vol", create_if_missing=True)
import io
with v.batch_upload() as b:
    b.put_file(io.BytesIO(b"hello"), "/a.txt")
list(v.listdir("/")); b"".join(v.read_file("a.txt"))
with modal.Dict.ephemeral() as e:
    e["k"] = "v"
modal.Dict.from_name("fuzz-seed-dict").hydrate()
'''

CLI_COMMANDS = [
    ["secret", "create", "fuzz-seed-secret", "A=1", "B=two"],
    ["secret", "list"],
    ["dict", "list"],
    ["queue", "list"],
    ["volume", "list"],
    ["volume", "ls", "fuzz-seed-vol"],
    ["app", "list"],
    ["environment", "list"],
    ["environment", "create", "fuzz-seed-env"],
    ["dict", "items", "fuzz-seed-dict"],
    ["queue", "peek", "fuzz-seed-queue"],
    ["secret", "delete", "fuzz-seed-secret", "--yes"],
]


def write_seed(rpc: str, data: bytes, seen: set) -> bool:
    key = (rpc, hashlib.sha256(data).hexdigest()[:16])
    if key in seen:
        return False
    seen.add(key)
    d = OUT / rpc
    d.mkdir(parents=True, exist_ok=True)
    if len(list(d.glob("*.bin"))) >= MAX_PER_RPC:
        return False
    (d / f"{key[1]}.bin").write_bytes(data)
    return True


def from_traces(directory: Path, seen: set) -> int:
    from google.protobuf import text_format
    from modal_proto import api_pb2

    service = api_pb2.DESCRIPTOR.services_by_name["ModalClient"]
    n = 0
    for path in sorted(directory.glob("*.log")):
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            rpc, text = rec.get("rpc"), rec.get("req", "")
            method = service.methods_by_name.get(rpc)
            if method is None or "...(+" in text:
                continue
            from google.protobuf import message_factory

            cls = message_factory.GetMessageClass(method.input_type)
            try:
                msg = text_format.Parse(text, cls())
            except text_format.ParseError:
                continue
            n += write_seed(rpc, msg.SerializeToString(), seen)
    return n


def capture(seen: set) -> int:
    sys.path.insert(0, str(REPO / "tests" / "serve"))
    from conftest import Ferry  # the suite's own launcher of the real binary

    with tempfile.TemporaryDirectory(prefix="ferry-corpus-") as d:
        server = Ferry(Path(d) / "data", "--no-modal-profile").start()
        out = Path(d) / "capture.jsonl"
        try:
            env = server.env(FERRY_CAPTURE_FILE=str(out))
            subprocess.run([sys.executable, "-c", CAPTURE_PRELUDE + SDK_WORKLOAD], env=env, check=True, timeout=300)
            for args in CLI_COMMANDS:
                code = CAPTURE_PRELUDE + f"import sys\nsys.argv = ['modal', *{args!r}]\nfrom modal.__main__ import main\nmain()\n"
                subprocess.run([sys.executable, "-c", code], env=env, timeout=120, capture_output=True)
        finally:
            server.stop()
        n = 0
        for line in out.read_text().splitlines():
            rpc, hexdata = json.loads(line)
            n += write_seed(rpc, bytes.fromhex(hexdata), seen)
        return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", type=Path, help="a directory of recorded RPC traces (*.log)")
    ap.add_argument("--capture", action="store_true", help="capture a live SDK and CLI workload against `ferry serve`")
    args = ap.parse_args()
    seen = {(p.parent.name, p.stem) for p in OUT.glob("*/*.bin")}
    if args.traces:
        print(f"{from_traces(args.traces, seen)} new seeds from traces in {args.traces}")
    if args.capture:
        print(f"{capture(seen)} new seeds from a live capture")
    print(f"corpus: {len(list(OUT.glob('*/*.bin')))} seeds for {len(list(OUT.glob('*')))} RPCs in {OUT}")


if __name__ == "__main__":
    main()
