"""Ferry model-serving benchmark against llama.cpp built from the same source, in one run on one
machine, same GGUF, same thread count, engines interleaved so both see the same background load:

1. prompt processing: `ferry llm serve` (its own `timings`, engine time) vs `llama-bench` ppN;
2. single-stream generation: Ferry vs `llama-server` (server-side timings of both);
3. throughput with 8 concurrent streams: total generated tokens / wall time, client side, both
   servers with 8 slots;
4. time to first token (p50, client side, one generated token) for prompts that share a
   2,000-token prefix: Ferry with its prompt cache vs `llama-server` without its cache
   (`cache_prompt: false`), and with it;
5. Ferry only: constrained-decoding cost, TTFT under concurrency.

The reference tools come from bench/llm/build_llama_cpp.sh (portable build, no -march=native).
Usage: .venv/bin/python bench/llm/bench.py [--model …] [--threads N] [--reps N]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import re
import shutil
import socket
import urllib.request
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "llm"))


def llama_bench(bin_dir: Path, model: Path, threads: int, pp: int, tg: int, reps: int) -> dict:
    out = subprocess.run(
        [str(bin_dir / "llama-bench"), "-m", str(model), "-t", str(threads), "-p", str(pp), "-n", str(tg), "-r", str(reps), "-o", "json"],
        check=True, capture_output=True, text=True,
    ).stdout
    res = {}
    for row in json.loads(out):
        kind = "pp" if row["n_prompt"] > 0 else "tg"
        res[kind] = row["avg_ts"]
    return res


def pinned_bin_dir(bin_dir: Path, variant: str | None) -> Path:
    """A copy of the reference bin dir with only one CPU module, the one Ferry chose, so both
    engines run the same kernels (ggml alone would pick by CPUID, which on a VM whose OS or
    hypervisor does not really support AMX ends in SIGILL)."""
    if not variant:
        return bin_dir
    out = bin_dir.parent / f"bin-{variant}"
    out.mkdir(exist_ok=True)
    for f in bin_dir.iterdir():
        if f.name.startswith("libggml-cpu-") and f.name != f"libggml-cpu-{variant}.so":
            continue
        dst = out / f.name
        if not dst.exists():
            shutil.copy2(f, dst, follow_symlinks=True)  # a copy, not a link: ggml searches the real exe's dir
    return out


def ferry_variant(log: Path) -> str | None:
    m = re.search(r"llama.cpp CPU backend: libggml-cpu-([a-z0-9_]+)\.so", log.read_text())
    return m.group(1) if m else None


def http_json(url: str, body: dict | None = None, timeout: float = 600) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


class LlamaServer:
    def __init__(self, bin_dir: Path, model: Path, threads: int, parallel: int, ctx: int):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [str(bin_dir / "llama-server"), "-m", str(model), "-t", str(threads), "-tb", str(threads), "-np", str(parallel),
             "-c", str(ctx * parallel), "-b", "512", "-ub", "512", "--host", "127.0.0.1", "--port", str(self.port), "--no-webui"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 120
        while True:
            try:
                if http_json(self.url + "/health", timeout=2).get("status") == "ok":
                    return
            except Exception:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("llama-server did not start: " + Path(self.log.name).read_text()[-2000:])
            time.sleep(0.2)

    def complete(self, prompt: str, n: int, cache: bool = False, ignore_eos: bool = True) -> dict:
        return http_json(self.url + "/completion", {"prompt": prompt, "n_predict": n, "temperature": 0, "ignore_eos": ignore_eos, "cache_prompt": cache})

    def stop(self):
        self.proc.terminate()
        self.proc.wait(20)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--pp", type=int, default=128)
    ap.add_argument("--tg", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--prefix", type=int, default=2000, help="tokens of the shared prefix for the TTFT test")
    args = ap.parse_args()
    model = Path(args.model)

    bin_dir = Path(subprocess.run(["bash", str(ROOT / "bench/llm/build_llama_cpp.sh")], check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    if not bin_dir.is_absolute():
        bin_dir = ROOT / bin_dir

    import conftest  # the tests' server launcher: same binary resolution, same llm.env handshake

    conftest.MODEL = model
    data = Path(tempfile.mkdtemp(prefix="ferry-llm-bench-"))
    ctx = 4096
    server = conftest.Server(data, extra=["--threads", str(args.threads), "--parallel", str(args.streams), "--ctx-size", str(ctx)])
    # A build without `cpu-variants` has ggml compiled in for AVX2 (haswell level).
    variant = ferry_variant(data / "server.log") or "haswell"
    bin_dir = pinned_bin_dir(bin_dir, variant)
    ref_server = LlamaServer(bin_dir, model, args.threads, args.streams, ctx)
    client, name = server.client, server.model
    try:
        # Warm up both.
        client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
        ref_server.complete("Hi", 4)
        no_eos = {"1": -100, "106": -100}  # keep generating: same token count as llama.cpp's ignore_eos
        salt = iter(range(10**6))

        def chat_text(content: str) -> str:
            # Ferry's default Gemma turn format, sent as raw text to llama-server (same tokens).
            return f"<bos><start_of_turn>user\n{content}<end_of_turn>\n<start_of_turn>model\n"

        def gen(rf=None, n=args.tg, content="Describe a sailor as JSON."):
            kw = {"response_format": rf} if rf else {}
            r = client.chat.completions.create(model=name, messages=[{"role": "user", "content": content}],
                                               max_tokens=n, temperature=0, logit_bias=no_eos, **kw)
            t = r.model_extra["timings"]
            return (r.usage.completion_tokens - 1) / (t["generation_ms"] / 1000), r

        def ref_gen(n=args.tg, content="Describe a sailor as JSON."):
            t = ref_server.complete(chat_text(content), n)["timings"]
            return t["predicted_n"] / (t["predicted_ms"] / 1000)

        words = ("the sea is wide and the ship is small " * 400).split()

        def prefill():
            # A fresh first word each time, so the prompt cache cannot help: this is raw prefill speed.
            text = f"{next(salt)} " + " ".join(words[: int(args.pp * 0.9)])
            r = client.chat.completions.create(model=name, messages=[{"role": "user", "content": text}], max_tokens=1, temperature=0)
            assert r.usage.prompt_tokens_details.cached_tokens < 8
            return r.usage.prompt_tokens / (r.model_extra["timings"]["prompt_ms"] / 1000), r.usage.prompt_tokens

        def concurrent(fn, k):
            out = [None] * k
            ths = [threading.Thread(target=lambda i=i: out.__setitem__(i, fn(i))) for i in range(k)]
            t = time.time()
            [th.start() for th in ths]
            [th.join() for th in ths]
            return out, time.time() - t

        def ferry_streams():
            def one(i):
                r = client.chat.completions.create(model=name, messages=[{"role": "user", "content": f"Story {next(salt)} about ship {i}."}],
                                                   max_tokens=args.tg, temperature=0, logit_bias=no_eos)
                return r.usage.completion_tokens
            toks, wall = concurrent(one, args.streams)
            return sum(toks) / wall

        def ref_streams():
            def one(i):
                return ref_server.complete(chat_text(f"Story {next(salt)} about ship {i}."), args.tg)["timings"]["predicted_n"]
            toks, wall = concurrent(one, args.streams)
            return sum(toks) / wall

        # A ~2,000-token document shared by every request; each question differs.
        doc_words = " ".join(f"Rule {i}: vessels of class {i % 7} keep {i % 5 + 1} cables from the pier." for i in range(200)).split()
        probe = client.chat.completions.create(model=name, messages=[{"role": "user", "content": " ".join(doc_words)}], max_tokens=1)
        doc = " ".join(doc_words[: int(len(doc_words) * args.prefix / probe.usage.prompt_tokens)])

        def ferry_ttft(q):
            t = time.time()
            r = client.chat.completions.create(model=name, messages=[{"role": "system", "content": doc}, {"role": "user", "content": q}], max_tokens=1, temperature=0)
            return time.time() - t, r

        def ref_ttft(q, cache):
            t = time.time()
            r = ref_server.complete(chat_text(doc + "\n\n" + q), 1, cache=cache, ignore_eos=False)
            return time.time() - t, r

        ferry_ttft("Warm the cache.")
        ref_ttft("Warm the cache.", True)

        ref_pp, ref_tg, tgs, pps, s_tgs, r_tgs, f_thr, r_thr = [], [], [], [], [], [], [], []
        f_tt, r_tt, r_tt_cached, cached = [], [], [], []
        for rep in range(args.reps):
            ref = llama_bench(bin_dir, model, args.threads, args.pp, args.tg, 1)
            ref_pp.append(ref["pp"])
            ref_tg.append(ref["tg"])
            p, prompt_tokens = prefill()
            pps.append(p)
            s_tgs.append(gen()[0])
            r_tgs.append(ref_gen())
            f_thr.append(ferry_streams())
            r_thr.append(ref_streams())
            for k in range(3):
                q = f"Question {rep}.{k}: how far from the pier must class {k} keep?"
                dt, r = ferry_ttft(q)
                f_tt.append(dt)
                cached.append(r.usage.prompt_tokens_details.cached_tokens / r.usage.prompt_tokens)
                r_tt.append(ref_ttft(q, False)[0])
                r_tt_cached.append(ref_ttft(q + " ", True)[0])
        med = statistics.median
        ref = {"pp": med(ref_pp), "tg": med(ref_tg)}
        pp, tg, rtg, fthr, rthr = med(pps), med(s_tgs), med(r_tgs), med(f_thr), med(r_thr)
        ftt, rtt, rttc = med(f_tt), med(r_tt), med(r_tt_cached)

        schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "ship": {"type": "string"}, "crew": {"type": "array", "items": {"type": "string"}}}, "required": ["name", "age", "ship", "crew"], "additionalProperties": False}
        rf = {"type": "json_schema", "json_schema": {"name": "sailor", "schema": schema, "strict": True}}
        constrained, mask_ms = [], []
        for _ in range(args.reps):
            tps, r = gen(rf, n=args.tg)
            if r.usage.completion_tokens > 8:
                constrained.append(tps)
                mask_ms.append(r.model_extra["timings"]["grammar_ms"] / r.usage.completion_tokens)
        tgc = med(constrained) if constrained else float("nan")
        mask = med(mask_ms) if mask_ms else float("nan")

        def ttft(concurrency: int) -> list[float]:
            def one(i):
                t = time.time()
                stream = client.chat.completions.create(model=name, messages=[{"role": "user", "content": f"Write one sentence about the sea ({next(salt)})."}], max_tokens=32, stream=True, temperature=0)
                for c in stream:
                    if c.choices and c.choices[0].delta.content:
                        break
                dt = time.time() - t
                stream.close()  # cancels the rest, so rounds do not overlap
                return dt

            return concurrent(one, concurrency)[0]

        t1 = med([ttft(1)[0] for _ in range(3)])
        t8 = [x for _ in range(2) for x in ttft(args.streams)]

        print(f"model: {model.name}, threads: {args.threads}, reps: {args.reps} (medians), load average: {os.getloadavg()[0]:.2f}, "
              f"CPU module: {variant} for both")
        print("| measure | llama.cpp | ferry llm serve | ratio |")
        print("|---|---|---|---|")
        print(f"| prompt tok/s (llama-bench pp{args.pp} vs a {prompt_tokens}-token chat prompt) | {ref['pp']:.1f} | {pp:.1f} | {pp / ref['pp']:.2f}x |")
        print(f"| generation tok/s, 1 stream (llama-server; llama-bench tg{args.tg}: {ref['tg']:.1f}) | {rtg:.1f} | {tg:.1f} | {tg / rtg:.2f}x |")
        print(f"| generation tok/s, {args.streams} concurrent streams, total (llama-server -np {args.streams}) | {rthr:.1f} | {fthr:.1f} | {fthr / rthr:.2f}x |")
        print(f"| TTFT p50, {args.prefix}-token shared prefix (llama-server without its cache) | {rtt * 1000:.0f} ms | {ftt * 1000:.0f} ms | {ftt / rtt:.2f}x |")
        print(f"| TTFT p50, same, llama-server with its cache (`cache_prompt`) | {rttc * 1000:.0f} ms | {ftt * 1000:.0f} ms | {ftt / rttc:.2f}x |")
        print(f"| share of the prompt served from Ferry's cache | | {med(cached) * 100:.0f} % | |")
        print(f"| generation tok/s with strict json_schema | | {tgc:.1f} | {tgc / tg:.2f}x of free text |")
        print(f"| grammar mask + advance per token (llguidance, 262k vocab) | | {mask:.2f} ms | {mask / (1000 / tg) * 100:.1f}% of a free-text token |")
        print(f"| TTFT, 1 stream | | {t1 * 1000:.0f} ms | |")
        print(f"| TTFT, {args.streams} concurrent streams (mean / max) | | {statistics.mean(t8) * 1000:.0f} / {max(t8) * 1000:.0f} ms | |")
    finally:
        server.stop()
        ref_server.stop()


if __name__ == "__main__":
    main()
