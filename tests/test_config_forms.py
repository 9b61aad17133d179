"""Config keys in both forms transformers writes (4: `rope_theta` + `rope_scaling`; 5: `rope_parameters`), Llama 3.1's
llama3 rope scaling against transformers, refusal of rope settings the converter does not understand, and the BPE
pre-tokenizer taken from the tokenizer (llama.cpp's fingerprint, or an exact known split), never from the class."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from converter.convert import convert_model
from fixtures import load_hf_model, make_checkpoint
from runtime.api import Llama
from tests.helpers import fields, llama_cpp_logit_diff, quantized, run_toolkit, tensors
from common.errors import UserError

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}


def _rewrite(folder, edit):
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    edit(cfg)
    path.write_text(json.dumps(cfg))


def as_transformers4(cfg):
    """The config as transformers 4 saved it: rope_theta and rope_scaling at the top, no rope_parameters (Gemma 3's
    sliding layers: rope_local_base_freq)."""
    params = dict(cfg.pop("rope_parameters"))
    if "sliding_attention" in params:
        cfg["rope_local_base_freq"] = params["sliding_attention"]["rope_theta"]
        params = dict(params["full_attention"])
    cfg["rope_theta"] = params.pop("rope_theta")
    cfg["rope_scaling"] = params if params.get("rope_type", "default") != "default" else None


def as_transformers5(cfg):
    """The config as transformers 5 saves it: only rope_parameters (theta, type and factors)."""
    cfg.pop("rope_theta", None)
    cfg.pop("rope_scaling", None)


@pytest.fixture(scope="module")
def llama31(tmp_path_factory, shared_fixtures):
    """A Llama-3.1-style tiny checkpoint (theta 500000, llama3 scaling) saved by transformers 5."""
    folder = make_checkpoint("llama", tmp_path_factory.mktemp("l31") / "m",
                             rope_parameters={"rope_theta": 500000.0, **LLAMA3_ROPE})
    _rewrite(folder, as_transformers5)
    return folder


def test_both_config_forms_give_the_same_file(llama31, tmp_path):
    import shutil
    t4 = tmp_path / "t4"
    shutil.copytree(llama31, t4)
    _rewrite(t4, as_transformers4)
    assert "rope_parameters" not in json.loads((t4 / "config.json").read_text())
    convert_model(llama31, outtype="f32", outfile=tmp_path / "t5.gguf")
    convert_model(t4, outtype="f32", outfile=tmp_path / "t4.gguf", model_name=llama31.name)
    assert (tmp_path / "t5.gguf").read_bytes() == (tmp_path / "t4.gguf").read_bytes()
    from gguf import GGUFReader
    r = GGUFReader(tmp_path / "t5.gguf")
    f = fields(r)
    assert f["llama.rope.freq_base"] == 500000.0  # the silently-wrong case of transformers 5 configs: not 10000
    assert "llama.rope.scaling.type" not in f       # llama3 scaling is a tensor, as llama.cpp's converter writes it
    shape, type_name, _ = tensors(r)["rope_freqs.weight"]
    assert shape == (8,) and type_name == "F32"


@pytest.mark.parametrize("arch", ["mistral", "mixtral", "qwen2", "qwen3", "qwen3moe", "starcoder2", "gemma2", "gemma3",
                                  "phi3"])
def test_every_family_reads_both_config_forms(tmp_path, shared_fixtures, arch):
    """Each family's checkpoint with its config as transformers 5 writes it and as transformers 4 wrote it: the same
    file."""
    import shutil
    t5 = make_checkpoint(arch, tmp_path / arch)
    _rewrite(t5, as_transformers5)
    t4 = tmp_path / "t4"
    shutil.copytree(t5, t4)
    _rewrite(t4, as_transformers4)
    for folder in (t5, t4):
        convert_model(folder, outtype="f32", outfile=tmp_path / f"{folder.name}.gguf", model_name=arch)
    assert (tmp_path / f"{arch}.gguf").read_bytes() == (tmp_path / "t4.gguf").read_bytes()


def test_llama3_rope_factors_follow_transformers(llama31):
    """rope_freqs.weight is transformers' inv_freq ratio (unscaled / llama3-scaled)."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from archs.base import llama3_rope_factors
    cfg = LlamaConfig.from_pretrained(llama31)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    cfg_plain = LlamaConfig.from_pretrained(llama31)
    cfg_plain.rope_parameters = {"rope_type": "default", "rope_theta": 500000.0}
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    plain = 1.0 / (500000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    ours = llama3_rope_factors({"type": "llama3", "theta": 500000.0, **{k: float(v) for k, v in LLAMA3_ROPE.items()
                                                                           if k != "rope_type"}}, head_dim)
    np.testing.assert_allclose(ours, (plain / scaled).numpy(), rtol=1e-5)
    assert ours.min() == 1.0 and ours.max() == 8.0  # both ends of the blend are used by this shape


@pytest.mark.slow
@pytest.mark.parametrize("outtype,tol", [("f32", 1e-4), ("f16", 1e-2)])
def test_llama31_logits_match_transformers(llama31, tmp_path, outtype, tol):
    path = tmp_path / f"{outtype}.gguf"
    convert_model(llama31, outtype=outtype, outfile=path)
    ids = [int(t) for t in np.random.default_rng(3).integers(3, 500, 48)]
    llm = Llama(str(path), n_ctx=64, logits_all=True, verbose=False, type_k=0, type_v=0)
    llm.eval(ids)
    with torch.no_grad():
        ref = load_hf_model("llama", llama31)(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(llm.scores - ref).max() / np.abs(ref).max() < tol


@pytest.mark.slow
def test_llama31_file_loads_in_llama_cpp(llama31, tmp_path):
    import os
    llama_cpp = __import__("llama_cpp") if os.environ.get("CI") == "true" else pytest.importorskip("llama_cpp")
    path = tmp_path / "f32.gguf"
    convert_model(llama31, outtype="f32", outfile=path)
    ids = [int(t) for t in np.random.default_rng(4).integers(3, 500, 32)]
    for type_name in ("F32", "Q8_0"):
        assert llama_cpp_logit_diff(llama_cpp, quantized(path, tmp_path, type_name), ids) < 2e-3


@pytest.mark.parametrize("edit,message", [
    (lambda c: c["rope_parameters"].update(rope_type="yarn", factor=4.0), "rope type 'yarn' is not supported"),
    (lambda c: c["rope_parameters"].update(mystery=1.0), "mystery"),
    (lambda c: c.update(rope_theta=10000.0), "rope_theta is 10000.0 in one place and 500000.0 in another"),
    (lambda c: c["rope_parameters"].pop("factor"), "needs a factor"),
    (lambda c: c.update(rope_parameters={"full_attention": {"rope_theta": 1e4}}), "per-layer-type"),
])
def test_rope_settings_not_understood_are_errors(llama31, tmp_path, edit, message):
    import shutil
    folder = tmp_path / "m"
    shutil.copytree(llama31, folder)
    _rewrite(folder, edit)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        convert_model(folder, outtype="f32", outfile=tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


# ------------------------------------------------------------------------------------------------ pre-tokenizers

def test_known_tokenizers_get_llama_cpps_name(tmp_path, shared_fixtures):
    """The fingerprint of the real CodeShell tokenizer is llama.cpp's 'codeshell'; a trained Qwen2-style and a GPT-2-style
    tokenizer (unknown fingerprints) are named by their exact split."""
    from converter.bpe_pre import detect
    tok = shared_fixtures / "codeshell"
    assert detect(tok, json.loads((tok / "tokenizer.json").read_text())) == "codeshell"
    for arch, name in (("qwen2", "qwen2"), ("gpt2", "gpt-2")):
        folder = make_checkpoint(arch, tmp_path / arch)
        assert detect(folder, json.loads((folder / "tokenizer.json").read_text())) == name


def test_llama_class_with_a_foreign_bpe_tokenizer(tmp_path, shared_fixtures):
    """A LlamaForCausalLM with another BPE tokenizer is not written as llama-bpe: here CodeShell's tokenizer."""
    import shutil
    folder = make_checkpoint("llama", tmp_path / "m", vocab_size=70144)
    (folder / "tokenizer.model").unlink()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(shared_fixtures / "codeshell" / name, folder / name)
    convert_model(folder, outtype="f32", outfile=tmp_path / "a.gguf", vocab_only=True)
    from gguf import GGUFReader
    assert fields(GGUFReader(tmp_path / "a.gguf"))["tokenizer.ggml.pre"] == "codeshell"


def test_unknown_pre_tokenizer_is_an_error_and_can_be_forced(tmp_path, shared_fixtures):
    folder = make_checkpoint("qwen2", tmp_path / "m")
    tj = json.loads((folder / "tokenizer.json").read_text())
    tj["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{L}+|\p{N}+|[^\p{L}\p{N}]+"
    (folder / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(UserError, match="unknown BPE pre-tokenizer .*--tokenizer-pre"):
        convert_model(folder, outtype="f32", outfile=tmp_path / "x.gguf")
    r = run_toolkit("convert", str(folder), "--outfile", str(tmp_path / "x.gguf"))
    assert r.returncode != 0 and "unknown BPE pre-tokenizer" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.gguf").exists()
    r = run_toolkit("convert", str(folder), "--vocab-only", "--tokenizer-pre", "gpt-2", "--outfile",
                    str(tmp_path / "y.gguf"))
    assert r.returncode == 0, r.stderr
    from gguf import GGUFReader
    assert fields(GGUFReader(tmp_path / "y.gguf"))["tokenizer.ggml.pre"] == "gpt-2"


def test_word_piece_prefix_is_refused_in_one_line(tmp_path):
    """A continuing_subword_prefix longer than a merge's second token made the tokenizers library panic (a Rust
    panic is pyo3's PanicException, a BaseException): make fuzz found it. llama.cpp's byte-level BPE has no such
    prefix, so the converter refuses it before the library is asked; the fingerprint turns a panic into the one line."""
    from converter.bpe_pre import fingerprint
    folder = make_checkpoint("qwen2", tmp_path / "m")
    tj = json.loads((folder / "tokenizer.json").read_text())
    tj["model"]["continuing_subword_prefix"] = "#" * 8
    (folder / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(UserError, match="cannot be loaded by the tokenizers library: range end index"):
        fingerprint(folder / "tokenizer.json")
    r = run_toolkit("convert", str(folder), "--outfile", str(tmp_path / "x.gguf"))
    assert r.returncode != 0 and "Traceback" not in r.stderr and "panicked" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == ("error: tokenizer.json: model.continuing_subword_prefix '########' "
                                                 "is not supported (byte-level BPE merges tokens without a prefix or "
                                                 "suffix)")
    assert not (tmp_path / "x.gguf").exists()
