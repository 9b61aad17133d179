"""`toolkit imatrix` against independent computations of llama-imatrix's statistics: transformers' own forward pass
with hooks on every linear layer of the blocks (the activations entering each matrix, squared and plain, summed per
column over the chunks llama-imatrix evaluates, each starting with BOS), in CI; and llama.cpp b11434's llama-imatrix
on the same model and text when bench-data has it (not in CI), for a dense and a mixture-of-experts model. The file is
the one `toolkit quantize --imatrix` reads."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from common.ggufio import GGUFFile
from converter.convert import convert_model
from fixtures import load_hf_model, make_checkpoint
from quantizer import imatrix as Q
from runtime import perplexity as P
from runtime.tokenizer import Tokenizer
from tests.helpers import REPO, run_toolkit

CALIBRATION = " ".join(
    "Once upon a time there was a little girl named Lily who liked to play in the park with her big red ball.".split()
    * 40)
# transformers' module names in a Llama block → the GGUF tensor's
HF_TO_GGUF = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down"}


def read(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    with GGUFFile(path) as g:
        return ({e.info.name: np.array(g.data(e).view(np.float32)).reshape(e.info.shape) for e in g.tensors},
                {k: g.value(k) for k in g.kv})


@pytest.fixture(scope="module")
def llama(tmp_path_factory, shared_fixtures):
    root = tmp_path_factory.mktemp("imatrix")
    folder = make_checkpoint("llama", root / "m", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2)
    f32 = root / "f32.gguf"
    convert_model(folder, outtype="f32", outfile=f32)
    text = root / "calibration.txt"
    text.write_text(CALIBRATION)
    return folder, f32, text


def hf_statistics(folder: Path, chunks: list[list[int]]) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """{GGUF name: (Σx², Σx, rows)} of the inputs of every linear layer in the blocks, by transformers."""
    model = load_hf_model("llama", folder)
    acc: dict[str, list] = {}

    def hook(name):
        def record(module, inputs, output):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double().numpy()
            s = acc.setdefault(name, [0.0, 0.0, 0])
            s[0] = s[0] + (x * x).sum(0)
            s[1] = s[1] + x.sum(0)
            s[2] += x.shape[0]
        return record
    for i, layer in enumerate(model.model.layers):
        for hf, gguf in HF_TO_GGUF.items():
            layer.get_submodule(hf).register_forward_hook(hook(f"blk.{i}.{gguf}.weight"))
    with torch.no_grad():
        for chunk in chunks:
            model(torch.tensor([chunk]))
    return {k: (v[0], v[1], v[2]) for k, v in acc.items()}


def test_statistics_equal_transformers(llama, tmp_path):
    folder, f32, text = llama
    out = tmp_path / "imatrix.gguf"
    p = run_toolkit("imatrix", "-m", f32, "-f", text, "-o", out, "-c", 32, "--chunks", 3, "-t", 2, "-ctk", "f32")
    assert p.returncode == 0, p.stderr
    assert "Final estimate: PPL = " in p.stdout
    tensors, kv = read(out)
    assert kv["general.type"] == "imatrix" and kv["imatrix.chunk_count"] == 3 and kv["imatrix.chunk_size"] == 32
    assert list(kv["imatrix.datasets"]) == [str(text)]
    with GGUFFile(f32) as g:
        tok = Tokenizer.from_gguf(g)
    tokens = P.tokenize_text(tok, CALIBRATION)
    plan = P.plan_chunks(len(tokens), 32, 3)
    chunks = [[P.chunk_bos(tok)] + plan.chunk(tokens, i)[1:] for i in range(plan.n_chunk)]
    ref = hf_statistics(folder, chunks)
    assert {n[:-len(".in_sum2")] for n in tensors if n.endswith(".in_sum2")} == set(ref)
    for name, (sum2, total, rows) in ref.items():
        assert tensors[f"{name}.counts"].reshape(-1).tolist() == [rows] == [96]
        np.testing.assert_allclose(tensors[f"{name}.in_sum2"].reshape(-1), sum2, rtol=1e-4, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(tensors[f"{name}.in_sum"].reshape(-1), total, rtol=1e-4, atol=1e-4, err_msg=name)
    # what quantize --imatrix reads: the sums over the counts
    m = Q.load(out)
    np.testing.assert_allclose(m.for_tensor("blk.0.ffn_down.weight"), ref["blk.0.ffn_down.weight"][0] / 96, rtol=1e-4)
    q = run_toolkit("quantize", "--imatrix", out, f32, tmp_path / "q.gguf", "IQ4_XS")
    assert q.returncode == 0, q.stderr


def test_errors(llama, tmp_path):
    _, f32, text = llama
    short = tmp_path / "short.txt"
    short.write_text("Once upon a time")
    for args, message in [(["-f", tmp_path / "none.txt"], "does not exist"),
                          (["-f", short], "you need at least 64 tokens"),
                          (["-f", text, "-c", "0"], "-c must be at least 1")]:
        p = run_toolkit("imatrix", "-m", f32, "-o", tmp_path / "x.gguf", "-c", "32", *args)
        assert p.returncode == 1 and message in p.stderr and "Traceback" not in p.stderr, p.stderr
        assert not (tmp_path / "x.gguf").exists()


# -- llama.cpp b11434's llama-imatrix (bench-data; not in CI) -------------------------------------------------------
BIN = REPO / "bench-data" / "llama.cpp" / "bin"


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "mixtral"])
def test_statistics_near_llama_imatrix(tmp_path, arch, shared_fixtures):
    """Ours and llama-imatrix's on the same F32 model and text: the same entries and counts (per expert too), sums
    within 1e-3 (its batched passes and f16 cache round differently)."""
    import subprocess
    if not (BIN / "llama-imatrix").exists():
        pytest.skip(f"llama.cpp's binaries are absent from {BIN} (build them with ../shared/tools/build-llama-cpp.sh)")
    folder = make_checkpoint(arch, tmp_path / "m", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2)
    f32 = tmp_path / "f32.gguf"
    convert_model(folder, outtype="f32", outfile=f32)
    text = tmp_path / "calibration.txt"
    text.write_text(CALIBRATION)
    subprocess.run([BIN / "llama-imatrix", "-m", f32, "-f", text, "-o", tmp_path / "theirs.gguf", "-c", "32",
                    "--chunks", "3", "-t", "2"], check=True, capture_output=True)
    p = run_toolkit("imatrix", "-m", f32, "-f", text, "-o", tmp_path / "ours.gguf", "-c", 32, "--chunks", 3)
    assert p.returncode == 0, p.stderr
    ours, _ = read(tmp_path / "ours.gguf")
    theirs, _ = read(tmp_path / "theirs.gguf")
    entries = {n for n in theirs if n.endswith((".in_sum2", ".counts", ".in_sum"))}
    assert set(ours) == entries
    for name in entries:
        if name.endswith(".counts"):
            assert np.array_equal(ours[name], theirs[name]), name
        else:
            scale = np.abs(theirs[name]).max()
            assert np.abs(ours[name] - theirs[name]).max() <= 1e-3 * scale, name
