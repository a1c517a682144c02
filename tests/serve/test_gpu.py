"""GPU requests with the real client: refused with a clear error on a host without GPUs, on
every path, and (against made-up cards, `--fake-gpus`) leased whole, by fallback order, one
container at a time per card."""

import os
import sys
from pathlib import Path

import pytest

from test_functions import APPS

HOST_HAS_GPUS = Path("/dev/nvidia0").exists()


def run_gpus(server, entry, timeout=600):
    code = f"import gpus; gpus.{entry}()"
    out = server.python(code, PYTHONPATH=str(APPS), timeout=timeout)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def outcomes(stdout):
    rows = {}
    for line in stdout.splitlines():
        verdict, _, rest = line.partition(" ")
        if verdict in ("REFUSED", "ACCEPTED"):
            case, _, message = rest.partition(" ")
            rows[case] = (verdict, message)
    return rows


def test_fake_gpus_are_leased_by_fallback_order_and_never_shared(fresh_ferry):
    # Made-up cards (nothing here is a GPU): an A100 80 GB and a T4.
    data = Path(os.environ.get("FERRY_TEST_DATA_DIR", "/var/tmp/ferry-test"))
    server = fresh_ferry("--no-modal-profile", "--fake-gpus", "NVIDIA A100-SXM4-80GB:80,Tesla T4:16", data_dir=data)
    out = run_gpus(server, "fake")
    lines = out.splitlines()
    # gpu=["H100", "A100"]: no H100 here, so the fallback A100 (card 0).
    assert "ranked GPU-fake-0000" in lines, out
    assert "class GPU-fake-0000" in lines, out
    assert "function GPU-fake-0001 None" in lines, out
    verdict, message = outcomes(out)["fake:L4"]
    assert verdict == "REFUSED" and message.startswith("RemoteError:"), message
    assert 'cannot provide gpu="L4": it has 2 GPUs: NVIDIA A100-SXM4-80GB (A100-80GB, 80 GiB), Tesla T4 (T4, 16 GiB)' in message
    holds = [l.split()[1:] for l in lines if l.startswith("hold ")]
    assert len(holds) == 3, out
    assert all(h[1] == "GPU-fake-0001" for h in holds), holds
    # One T4: containers that ran inputs never held it at the same time.
    spans = {}
    for task, _, start, end in holds:
        lo, hi = spans.get(task, (float(start), float(end)))
        spans[task] = (min(lo, float(start)), max(hi, float(end)))
    ordered = sorted(spans.values())
    for (a_lo, a_hi), (b_lo, b_hi) in zip(ordered, ordered[1:]):
        assert a_hi <= b_lo, f"two containers held the one T4 at once: {spans}"


@pytest.mark.skipif(HOST_HAS_GPUS, reason="this host has GPUs; the refusals are for hosts without")
def test_gpu_requests_are_refused_on_every_path_and_cpu_work_still_runs(runner):
    out = run_gpus(runner, "refusals")
    rows = outcomes(out)
    expected = [f"{kind}:{gpu}" for kind in ("function", "class") for gpu in ("T4", "any", "A10G:2", "H100+A100")]
    expected += [f"{path}.with_options:{gpu}" for gpu in ("T4", "any", "A10G:2") for path in ("cls", "function")]
    expected += ["image:T4"]
    assert sorted(rows) == sorted(expected), out
    shown = {"T4": '"T4"', "any": '"ANY"', "A10G:2": '"A10G:2"', "H100+A100": '["H100", "A100"]'}
    # Build steps run without a GPU: an image with `gpu=` builds, and a CPU function on it runs.
    assert rows.pop("image:T4") == ("ACCEPTED", ""), out
    for case, (verdict, message) in rows.items():
        gpu = case.split(":", 1)[1]
        assert verdict == "REFUSED", f"{case} was accepted on a host without GPUs"
        assert message.startswith("RemoteError:"), f"{case}: {message}"
        assert f"this Ferry host cannot provide gpu={shown[gpu]}: it has no GPUs" in message, f"{case}: {message}"
        if case.startswith("class:"):
            assert "Class 'OnGpu': " in message, message
        if case.startswith("cls.with_options:"):
            assert "Class 'Model': " in message, message
    # Deploying such an app works (its other functions serve) with a warning from the server.
    warned = [l for l in out.splitlines() if l.startswith("WARNED ")]
    for kind in ("function", "class"):
        for gpu in ("T4", "any", "A10G:2", "H100+A100"):
            case = f"{kind}:{gpu}"
            assert any(l.startswith(f"WARNED {case} ") and "cannot provide" in l and "its calls will fail" in l for l in warned), (case, out)
    # The server kept serving: CPU functions and classes run, other options still apply.
    assert "cpu 42 8 None" in out.splitlines(), out
