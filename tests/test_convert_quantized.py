"""`toolkit convert DIR --outtype <quantization type>`: one step from the Hugging Face checkpoint to the quantized GGUF,
byte for byte the file `convert --outtype f32` then `quantize` gives (llama.cpp-equal by tests/test_quantize_file.py),
without the intermediate file; with an importance matrix too; the numeric ftype form; errors."""
from __future__ import annotations

import pytest

from converter.convert import CheckpointTensors, convert_model
from fixtures import make_checkpoint
from quantizer import imatrix
from quantizer.quantize import quantize_file, quantize_tensors
from quantizer.types import parse_file_type
from tests.helpers import run_toolkit
from tests.test_quantize_imatrix import matrix_shapes, write_random_imatrix


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A Llama with GQA and a Mixtral (experts stacked from separate checkpoint tensors), rows of 256, bf16 weights
    (so f16 would round them: the one step quantizes the checkpoint's values, as from an f32 file)."""
    root = tmp_path_factory.mktemp("ckpts")
    out = {
        "llama": make_checkpoint("llama", root / "llama", dtype="bfloat16", hidden_size=256, intermediate_size=512,
                                 num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2),
        "mixtral": make_checkpoint("mixtral", root / "mixtral", hidden_size=256, intermediate_size=256,
                                   num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                                   tie_word_embeddings=True),
    }
    for name, folder in list(out.items()):
        out[name, "f32"] = root / f"{name}-f32.gguf"
        convert_model(folder, outtype="f32", outfile=out[name, "f32"])
    return out


@pytest.mark.parametrize("model,type_name", [("llama", "Q8_0"), ("llama", "Q4_0"), ("llama", "Q4_K_M"),
                                             ("mixtral", "Q4_K_M"), ("mixtral", "IQ4_NL")])
def test_one_step_equals_convert_then_quantize(checkpoints, tmp_path, model, type_name):
    ft = parse_file_type(type_name)
    quantize_file(checkpoints[model, "f32"], tmp_path / "two-steps.gguf", ft, info=lambda m: None, warn=lambda m: None)
    with CheckpointTensors(checkpoints[model]) as src:
        quantize_tensors(src, tmp_path / "one-step.gguf", ft, info=lambda m: None, warn=lambda m: None)
    assert (tmp_path / "one-step.gguf").read_bytes() == (tmp_path / "two-steps.gguf").read_bytes()


def test_command_line_with_an_importance_matrix_and_the_numeric_form(checkpoints, tmp_path):
    m = tmp_path / "m.imatrix.gguf"
    write_random_imatrix(matrix_shapes(checkpoints["llama", "f32"]), m)
    quantize_file(checkpoints["llama", "f32"], tmp_path / "two.gguf", parse_file_type("IQ4_XS"),
                  imatrix=imatrix.load(m), info=lambda s: None, warn=lambda s: None)
    r = run_toolkit("convert", checkpoints["llama"], "--outtype", "iq4_xs", "--imatrix", m,
                    "--outfile", tmp_path / "one.gguf")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "one.gguf").read_bytes() == (tmp_path / "two.gguf").read_bytes()
    quantize_file(checkpoints["llama", "f32"], tmp_path / "two15.gguf", parse_file_type("15"), info=lambda s: None,
                  warn=lambda s: None)
    r = run_toolkit("convert", checkpoints["llama"], "15", "--outfile", tmp_path / "one15.gguf")  # 15 = Q4_K_M
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "one15.gguf").read_bytes() == (tmp_path / "two15.gguf").read_bytes()


def test_errors(checkpoints, tmp_path):
    m = tmp_path / "m.imatrix.gguf"
    write_random_imatrix(matrix_shapes(checkpoints["llama", "f32"]), m)
    cases = [
        (["--outtype", "f16", "--imatrix", m], "needs a quantized --outtype"),
        (["--outtype", "q4_0", "--vocab-only"], "takes no quantization type"),
        (["2", "--outtype", "q8_0"], "contradicts"),
        (["--outtype", "q9_9"], "unknown quantization type"),
        (["--outtype", "q2_k_s"], "requires an importance matrix"),
    ]
    for options, message in cases:
        r = run_toolkit("convert", checkpoints["llama"], *options, "--outfile", tmp_path / "o.gguf")
        assert r.returncode == 1 and message in r.stderr.strip().splitlines()[-1], r.stderr
        assert not (tmp_path / "o.gguf").exists()
