"""A test-only vision projector: a random-weight, two-block CLIP ViT with a LLaVA MLP projector,
written as a GGUF file that llama.cpp's multimodal loader (mtmd / clip) accepts.

It sees nothing: its weights are random. It exists so the tests can drive the whole image path
(data URL → decode → preprocessing → vision encoder → projector → embeddings in the KV cache)
against the text test model, and check it by token counts: a 56×56 input in 14-pixel patches is
16 image tokens.

Usage: python tests/llm/tiny_projector.py OUT.gguf --text-model models/gemma-3-270m-q4_k_m.gguf
"""
import argparse
import struct
import zlib
from pathlib import Path

import numpy as np

IMAGE_SIZE = 56
PATCH_SIZE = 14
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2
NAME = "ferry-test-vision-projector (random weights, test only)"


def text_embedding_length(model: Path) -> int:
    import gguf

    r = gguf.GGUFReader(str(model))
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    return int(r.fields[f"{arch}.embedding_length"].parts[-1][0])


def write_projector(path: Path, n_embd_text: int, seed: int = 0) -> Path:
    import gguf

    rng = np.random.default_rng(seed)
    n_embd, n_ff, n_head, n_layer, hidden = 32, 64, 2, 2, 64
    n_pos = IMAGE_TOKENS

    def w(*shape, scale=0.05):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    g = gguf.GGUFWriter(str(path), "clip")
    g.add_string("general.name", NAME)
    g.add_string("general.description", "random weights; for Ferry's tests of the image path only")
    g.add_bool("clip.has_vision_encoder", True)
    g.add_bool("clip.has_text_encoder", False)
    g.add_string("clip.projector_type", "mlp")
    g.add_bool("clip.use_gelu", True)
    g.add_uint32("clip.vision.image_size", IMAGE_SIZE)
    g.add_uint32("clip.vision.patch_size", PATCH_SIZE)
    g.add_uint32("clip.vision.embedding_length", n_embd)
    g.add_uint32("clip.vision.feed_forward_length", n_ff)
    g.add_uint32("clip.vision.block_count", n_layer)
    g.add_uint32("clip.vision.attention.head_count", n_head)
    g.add_uint32("clip.vision.projection_dim", n_embd_text)
    g.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    g.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    g.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])

    # numpy shapes are ggml's ne reversed: a matmul weight (out, in) is ne [in, out].
    g.add_tensor("v.patch_embd.weight", w(n_embd, 3, PATCH_SIZE, PATCH_SIZE))
    g.add_tensor("v.patch_embd.bias", w(n_embd))
    g.add_tensor("v.position_embd.weight", w(n_pos, n_embd))
    g.add_tensor("v.pre_ln.weight", np.ones(n_embd, np.float32))
    g.add_tensor("v.pre_ln.bias", np.zeros(n_embd, np.float32))
    for i in range(n_layer):
        p = f"v.blk.{i}"
        for t in ("attn_q", "attn_k", "attn_v", "attn_out"):
            g.add_tensor(f"{p}.{t}.weight", w(n_embd, n_embd))
            g.add_tensor(f"{p}.{t}.bias", w(n_embd))
        for t in ("ln1", "ln2"):
            g.add_tensor(f"{p}.{t}.weight", np.ones(n_embd, np.float32))
            g.add_tensor(f"{p}.{t}.bias", np.zeros(n_embd, np.float32))
        g.add_tensor(f"{p}.ffn_up.weight", w(n_ff, n_embd))
        g.add_tensor(f"{p}.ffn_up.bias", w(n_ff))
        g.add_tensor(f"{p}.ffn_down.weight", w(n_embd, n_ff))
        g.add_tensor(f"{p}.ffn_down.bias", w(n_embd))
    g.add_tensor("mm.0.weight", w(hidden, n_embd))
    g.add_tensor("mm.0.bias", w(hidden))
    g.add_tensor("mm.2.weight", w(n_embd_text, hidden))
    g.add_tensor("mm.2.bias", w(n_embd_text))
    g.write_header_to_file()
    g.write_kv_data_to_file()
    g.write_tensors_to_file()
    g.close()
    return path


def png(width: int = 24, height: int = 16) -> bytes:
    """A small RGB PNG (a colour gradient), written without an imaging library."""
    rows = b"".join(b"\x00" + bytes(v for x in range(width) for v in ((x * 10) % 256, (y * 15) % 256, 128)) for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--text-model", required=True)
    a = ap.parse_args()
    print(write_projector(Path(a.out), text_embedding_length(Path(a.text_model))))
