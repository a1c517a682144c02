#!/usr/bin/env bash
# GPU check on a real NVIDIA host: Ferry's passthrough end to end, with the real modal client.
#
#   FERRY_BIN=/path/to/ferry PYTHON=/path/to/python-with-modal-1.6.4 tools/gpu-check.sh
#
# 1. `ferry gpus` must list the cards `nvidia-smi -L` lists, by the same names.
# 2. `ferry serve` (the release binary built elsewhere, FERRY_BIN) runs a Modal app whose
#    function, inside a container, runs `nvidia-smi -L` and the CUDA driver API through ctypes
#    (`cuInit`, `cuDeviceGetCount`, `cuDeviceGetName` on libcuda.so.1; no framework needed):
#    gpu="any" must see exactly one card, named as on the host; gpu="any:N" all N; the host's
#    own type is accepted and a type it lacks is refused with the clear error.
# 3. Optional (GGUF=model.gguf and FERRY_CUDA_BIN=a `--features cuda` build): `ferry llm serve`
#    with `--gpu-layers 999` against the CPU build on the same model; prints tokens/s and the
#    ratio.
#
# Needs root (containers), a prepared data dir or a reachable Debian mirror for `ferry images
# prepare` (FERRY_DATA_DIR, default a temp dir), `curl`. Prints `GPU CHECK PASSED` at the end;
# exits non-zero at the first failed check. Record its output in docs/gpu.md.
set -euo pipefail

FERRY_BIN=${FERRY_BIN:-$(pwd)/.bin/ferry}
PYTHON=${PYTHON:-$(pwd)/.venv/bin/python}
DATA=${FERRY_DATA_DIR:-$(mktemp -d /var/tmp/ferry-gpu-check.XXXXXX)}
WORK=$(mktemp -d)
SERVE_PID=""
cleanup() {
    [ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
fail() { echo "GPU CHECK FAILED: $*" >&2; exit 1; }
step() { echo; echo "== $*"; }

[ -x "$FERRY_BIN" ] || fail "no ferry binary at $FERRY_BIN (set FERRY_BIN)"
"$PYTHON" -c 'import modal; assert modal.__version__ == "1.6.4", modal.__version__' || fail "$PYTHON has no modal==1.6.4 (set PYTHON)"
command -v nvidia-smi >/dev/null || fail "nvidia-smi is not on PATH: is this a GPU host with the driver installed?"

step "host"
uname -r
nvidia-smi --query-gpu=index,name,memory.total,uuid,driver_version --format=csv,noheader
mapfile -t HOST_NAMES < <(nvidia-smi --query-gpu=name --format=csv,noheader)
N=${#HOST_NAMES[@]}
[ "$N" -ge 1 ] || fail "nvidia-smi lists no GPU"
ls -l /dev/nvidia* || true

step "ferry gpus"
"$FERRY_BIN" gpus | tee "$WORK/gpus.txt"
grep -q "^GPUs: $N (NVML" "$WORK/gpus.txt" || fail "ferry gpus does not list the $N cards through NVML"
for name in "${HOST_NAMES[@]}"; do
    grep -qF "$name" "$WORK/gpus.txt" || fail "ferry gpus does not name '$name'"
done
HOST_TYPE=$(awk -F'  +' 'NR==3 {print $3}' "$WORK/gpus.txt")
[ -n "$HOST_TYPE" ] && [ "$HOST_TYPE" != "(any only)" ] || fail "card 0 has no GPU type (name it with --gpu-alias)"
echo "card 0 answers to gpu=\"$HOST_TYPE\""

step "data dir $DATA"
if [ ! -e "$DATA/.gpu-check-prepared" ]; then
    "$FERRY_BIN" images prepare --data-dir "$DATA" || fail "ferry images prepare failed (it needs a Debian mirror; or set FERRY_DATA_DIR to a data dir prepared elsewhere)"
    touch "$DATA/.gpu-check-prepared"
fi

step "ferry serve"
"$FERRY_BIN" serve --data-dir "$DATA" --port 0 --no-modal-profile >"$WORK/serve.log" 2>&1 &
SERVE_PID=$!
for _ in $(seq 300); do
    grep -q "^Ferry is serving the Modal API at " "$WORK/serve.log" && break
    kill -0 "$SERVE_PID" 2>/dev/null || { cat "$WORK/serve.log"; fail "ferry serve exited"; }
    sleep 0.1
done
URL=$(sed -n 's/^Ferry is serving the Modal API at \([^ ]*\).*/\1/p' "$WORK/serve.log")
[ -n "$URL" ] || fail "ferry serve did not start"
set -a; . "$DATA/client.env"; set +a
export MODAL_SERVER_URL=$URL MODAL_CONFIG_PATH=$WORK/modal.toml
echo "serving at $URL"

cat >"$WORK/gpu_probe.py" <<PY
import ctypes, json, os, subprocess, sys, time
import modal

app = modal.App("ferry-gpu-check", image=modal.Image.debian_slim())

def probe():
    smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    cuda = ctypes.CDLL("libcuda.so.1")
    rc = cuda.cuInit(0)
    count = ctypes.c_int(0)
    cuda.cuDeviceGetCount(ctypes.byref(count))
    names = []
    for i in range(count.value):
        dev = ctypes.c_int(0)
        cuda.cuDeviceGet(ctypes.byref(dev), i)
        buf = ctypes.create_string_buffer(256)
        cuda.cuDeviceGetName(buf, 256, dev)
        names.append(buf.value.decode())
    ldcache = subprocess.run(["sh", "-c", "ldconfig -p | grep -c libcuda.so.1 || true"], capture_output=True, text=True).stdout.strip()
    return {
        "smi": smi.stdout.strip().splitlines(), "smi_rc": smi.returncode, "cuInit": rc, "count": count.value, "names": names,
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"), "NVIDIA_VISIBLE_DEVICES": os.environ.get("NVIDIA_VISIBLE_DEVICES"),
        "ldcache_libcuda": ldcache, "task": os.environ.get("MODAL_TASK_ID"), "t": time.time(),
    }

@app.function(gpu="any", scaledown_window=2)
def one():
    return probe()

@app.function(gpu="any:$N", scaledown_window=2)
def every():
    return probe()

@app.function(gpu="$HOST_TYPE", scaledown_window=2)
def by_type():
    return probe()

@app.function(gpu="any", scaledown_window=2, max_containers=$((N + 1)))
def hold(seconds):
    start = time.time()
    time.sleep(seconds)
    return os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("MODAL_TASK_ID"), start, time.time()

if __name__ == "__main__":
    with app.run():
        out = {"one": one.remote(), "every": every.remote(), "by_type": by_type.remote()}
        calls = [hold.spawn(4) for _ in range($N + 1)]
        out["hold"] = [c.get() for c in calls]
        lacking = next(t for t in ["B200", "H200", "H100!", "L40S", "T4"] if t != "$HOST_TYPE")
        try:
            one.with_options(gpu=lacking + ":64").remote()
            out["refusal"] = None
        except Exception as e:
            out["refusal"] = f"{type(e).__name__}: {e}"
    print("RESULT " + json.dumps(out))
PY

step "modal app with gpu= on the host's cards"
(cd "$WORK" && "$PYTHON" gpu_probe.py) 2>&1 | tee "$WORK/app.log"
RESULT=$(sed -n 's/^RESULT //p' "$WORK/app.log")
[ -n "$RESULT" ] || fail "the app did not finish (see the output above and $WORK/serve.log)"
HOST_NAME0=${HOST_NAMES[0]} N=$N "$PYTHON" - "$RESULT" <<'PY' || fail "container checks"
import json, os, sys
r = json.loads(sys.argv[1]); n = int(os.environ["N"]); host = os.environ["HOST_NAME0"]
def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    return ok
good = True
one = r["one"]
good &= check(one["smi_rc"] == 0 and len(one["smi"]) == 1, f'gpu="any": nvidia-smi -L lists one GPU: {one["smi"]}')
good &= check(one["cuInit"] == 0, f'gpu="any": cuInit(0) == 0 (got {one["cuInit"]})')
good &= check(one["count"] == 1, f'gpu="any": cuDeviceGetCount == 1 (got {one["count"]})')
good &= check(bool(one["names"]) and one["names"][0] == host, f'gpu="any": cuDeviceGetName == {host!r} (got {one["names"]})')
good &= check(one["ldcache_libcuda"] not in ("", "0"), f'ldconfig -p finds libcuda.so.1 ({one["ldcache_libcuda"]} entries)')
every = r["every"]
good &= check(every["count"] == n and len(every["smi"]) == n, f'gpu="any:{n}": CUDA sees {every["count"]}, nvidia-smi {len(every["smi"])}')
good &= check(r["by_type"]["count"] == 1, f'the host type is accepted: {r["by_type"]["names"]}')
spans = {}
for visible, task, start, end in r["hold"]:
    spans.setdefault(visible, []).append((start, end, task))
overlap = False
for visible, s in spans.items():
    s.sort()
    for (a0, a1, ta), (b0, b1, tb) in zip(s, s[1:]):
        if ta != tb and a1 > b0:
            overlap = True
good &= check(not overlap, f"{n + 1} containers on {n} card(s): no card held by two containers at once ({sorted(spans)})")
good &= check(bool(r["refusal"]) and "InvalidError" in r["refusal"] and "cannot provide gpu=" in r["refusal"], f'a type the host lacks is refused: {r["refusal"]}')
sys.exit(0 if good else 1)
PY

if [ -n "${GGUF:-}" ] && [ -n "${FERRY_CUDA_BIN:-}" ]; then
    step "ferry llm serve: GPU offload against CPU on $GGUF"
    bench() {  # bench BIN EXTRA-ARGS... -> tokens/s
        local bin=$1; shift
        local dir; dir=$(mktemp -d)
        "$bin" llm serve --model "$GGUF" --port 0 --data-dir "$dir" "$@" >"$dir/log" 2>&1 &
        local pid=$!
        for _ in $(seq 600); do [ -e "$dir/llm.env" ] && break; sleep 0.2; done
        [ -e "$dir/llm.env" ] || { cat "$dir/log" >&2; kill $pid; return 1; }
        set -a; . "$dir/llm.env"; set +a
        local body='{"model":"m","messages":[{"role":"user","content":"Write a long story about a ferry."}],"max_tokens":256,"temperature":0}'
        curl -sf "$OPENAI_BASE_URL/chat/completions" -H "Authorization: Bearer $OPENAI_API_KEY" -H 'Content-Type: application/json' -d "$body" >/dev/null  # warm-up
        local t0 t1 toks
        t0=$(date +%s.%N)
        toks=$(curl -sf "$OPENAI_BASE_URL/chat/completions" -H "Authorization: Bearer $OPENAI_API_KEY" -H 'Content-Type: application/json' -d "$body" | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["usage"]["completion_tokens"])')
        t1=$(date +%s.%N)
        kill $pid; wait $pid 2>/dev/null || true
        rm -rf "$dir"
        "$PYTHON" -c "print(round($toks / ($t1 - $t0), 1))"
    }
    CPU_TPS=$(bench "$FERRY_BIN") || fail "CPU llm serve"
    GPU_TPS=$(bench "$FERRY_CUDA_BIN" --gpu-layers 999) || fail "GPU llm serve"
    echo "tokens/s: CPU $CPU_TPS, GPU $GPU_TPS, ratio $("$PYTHON" -c "print(round($GPU_TPS / $CPU_TPS, 2))")"
else
    echo; echo "(llm GPU/CPU comparison skipped: set GGUF=model.gguf and FERRY_CUDA_BIN=a --features cuda build)"
fi

echo
echo "GPU CHECK PASSED"
