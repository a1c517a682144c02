"""`--gpu-layers` on the default (CPU) build: refused at once with what to do, never a silent
CPU run. (A `--features cuda` build offloads instead; tools/gpu-check.sh measures that.)"""

import subprocess

from conftest import MODEL, server_command


def test_gpu_layers_on_a_cpu_build_is_refused_with_a_clear_message(tmp_path):
    cmd = server_command() + ["serve", "--model", str(MODEL), "--port", "0", "--data-dir", str(tmp_path), "--gpu-layers", "8"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "--gpu-layers 8 needs a CUDA build of Ferry" in text, text
    assert "--features cuda" in text, text
    assert not (tmp_path / "llm.env").exists(), "the server must not have started"
