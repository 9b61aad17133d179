"""Our files against those llama.cpp's own converter writes on the same checkpoint (convert_hf_to_gguf.py of the
llama.cpp that llama-cpp-python 0.3.36 vendors, fetched by `make install` into build/): the same tensors (names, shapes,
types) and the same metadata, but for the differences listed in ONLY_OURS / ONLY_THEIRS. Byte-level BPE checkpoints
carry CodeShell's real tokenizer (one whose fingerprint llama.cpp's converter knows; it refuses the tiny trained ones).
Qwen1 (the real config shrunk, the real qwen.tiktoken) goes through the same converter with one stand-in: its tokenizer
is code in the checkpoint that transformers 5 cannot load, so tests/qwen1_tokenizer_shim.py answers the four things the
converter asks of it (mergeable_ranks, special_tokens, get_vocab, encode) with the tiktoken package, from qwen.tiktoken
and the split regex and special tokens of the checkpoint's tokenization_qwen.py; the rest is the converter's own code."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from gguf import GGUFReader

from converter.convert import convert_model
from converter.pyliterals import assigned_values
from fixtures import make_checkpoint
from fixtures.qwen1 import make_qwen1_checkpoint
from tests.helpers import REPO

CONVERTER = REPO / "build" / "llama-cpp-python-0.3.36-converter"
BPE = {"qwen2", "qwen3", "qwen3moe", "starcoder2", "gpt2"}
# keys we write and llama.cpp's converter does not: the model's name (it writes a size label instead), and add_bos /
# add_eos, which we always state (llama.cpp only when the tokenizer's post-processor or config says)
ONLY_OURS = {"general.name", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
             # Qwen1: its file does not load in llama.cpp, whose qwen model reads the RMS epsilon key (it writes
             # layer_norm_epsilon) and n_ff from feed_forward_length (it writes none: Qwen1's config calls it
             # ffn_hidden_size, which its converter does not look up)
             "qwen.attention.layer_norm_rms_epsilon", "qwen.feed_forward_length"}
# keys it writes and we do not: its size label and the organization it reads from a config's _name_or_path (CodeShell's
# "WisdomShell/CodeShell"), add_sep_token (false; absent means the same)
ONLY_THEIRS = {"general.size_label", "general.organization", "tokenizer.ggml.add_sep_token",
               "qwen.attention.layer_norm_epsilon"}  # Qwen1: see qwen.attention.layer_norm_rms_epsilon above

GENERATION_CONFIG = {"do_sample": True, "sequence": "top_k;top_p;temperature", "top_k": 20, "top_p": 0.8, "min_p": 0.05,
                     "xtc_probability": 0.5, "xtc_threshold": 0.1, "temperature": 0.7, "penalty_last_n": 64,
                     "repetition_penalty": 1.05, "mirostat": 2, "mirostat_tau": 5.0, "mirostat_eta": 0.1,
                     "max_new_tokens": 512}


@pytest.fixture(scope="module")
def converter(shared_fixtures):
    if not (CONVERTER / "convert_hf_to_gguf.py").is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"llama.cpp's converter missing at {CONVERTER} (make install fetches it)")
        pytest.skip(f"llama.cpp's converter missing at {CONVERTER}: run make install")
    return CONVERTER


def _read(path):
    r = GGUFReader(path)
    keys = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: (tuple(int(x) for x in t.shape), t.tensor_type.name) for t in r.tensors}
    return keys, tensors


@pytest.mark.slow
@pytest.mark.parametrize("outtype", ["f32", "f16"])
@pytest.mark.parametrize("arch", ["llama", "mixtral", "gemma2", "gemma3", "gemma3mm", "phi3", "qwen2", "qwen3", "qwen3moe",
                                  "starcoder2", "gpt2", "codeshell"])
def test_same_file_as_llama_cpps_converter(converter, shared_fixtures, tmp_path, arch, outtype):
    if arch in BPE:
        folder = make_checkpoint(arch, tmp_path / arch, vocab_size=70144)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(shared_fixtures / "codeshell" / name, folder / name)
    else:
        folder = make_checkpoint(arch, tmp_path / arch)
    if arch == "llama":  # every sampling default llama.cpp's converter takes from it (general.sampling.*)
        (folder / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG))
    _compare(converter, folder, tmp_path, outtype, arch)


@pytest.mark.slow
@pytest.mark.parametrize("outtype", ["f16"])
def test_qwen1_same_file_as_llama_cpps_converter(converter, shared_fixtures, tmp_path, outtype):
    """Qwen1 through llama.cpp's converter, its remote tokenizer code stood in for by tests/qwen1_tokenizer_shim.py.
    F16 only (its types are the ones with rules; F32 names the same tensors and keys): llama.cpp's converter spends
    some 3.5 CPU-minutes rebuilding the 151k merges from the ranks in Python."""
    folder = make_qwen1_checkpoint(tmp_path / "qwen1")
    values = assigned_values(folder / "tokenization_qwen.py")
    spec = tmp_path / "tokenizer-spec.json"
    spec.write_text(json.dumps({"folder": str(folder), "pat_str": values["PAT_STR"][0],
                                "special_tokens": list(values["special_tokens"][0])}))
    shim = [str(REPO / "tests" / "qwen1_tokenizer_shim.py"), str(spec)]
    _compare(converter, folder, tmp_path, outtype, "qwen", shim=shim)


def _compare(converter, folder, tmp_path, outtype, arch, shim=()):
    """Converts the folder with llama.cpp's converter (run by the shim script when one is given) and ours, and checks
    the tensors and metadata are the same but for ONLY_OURS / ONLY_THEIRS (and general.name's value)."""
    theirs_path, ours_path = tmp_path / "theirs.gguf", tmp_path / "ours.gguf"
    run = subprocess.run([sys.executable, *shim, str(converter / "convert_hf_to_gguf.py"), str(folder),
                          "--outtype", outtype, "--outfile", str(theirs_path)], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(converter / "gguf-py")))
    assert run.returncode == 0, run.stderr[-2000:]
    convert_model(folder, outtype=outtype, outfile=ours_path, info=lambda m: None)
    ours, ours_t = _read(ours_path)
    theirs, theirs_t = _read(theirs_path)
    assert ours_t == theirs_t
    assert set(ours) - set(theirs) <= ONLY_OURS and set(theirs) - set(ours) <= ONLY_THEIRS
    if arch == "phi3":  # its Phi-3 converter rewrites the added tokens the SentencePiece model has already
        _drop_phi3_rewrites(folder, ours, theirs)
    # general.name, when both write it: ours the folder's name (or --model-name), theirs the config's _name_or_path
    differ = {k: (ours[k], theirs[k]) for k in set(ours) & set(theirs) - {"general.name"} if ours[k] != theirs[k]}
    assert not differ


def _drop_phi3_rewrites(folder, ours, theirs):
    """llama.cpp's Phi-3 converter gives every token of tokenizer.json's added_tokens the score -1000 and type
    CONTROL, also those the SentencePiece model has with the same text (<unk>, <s>, </s>: we keep the model's own, as
    its generic converter does), and its padding the score -10000 (-1000 in its generic converter and ours). Only those
    entries may differ; the keys are then compared without them."""
    import json
    model = {a["id"] for a in json.loads((folder / "tokenizer.json").read_text())["added_tokens"] if a["id"] < 32000}
    pads = {i for i, t in enumerate(ours["tokenizer.ggml.tokens"]) if t.startswith("[PAD")}
    assert model == {0, 1, 2} and len(pads) == 32064 - 32011
    for key, allowed in (("tokenizer.ggml.scores", model | pads), ("tokenizer.ggml.token_type", model)):
        assert {i for i, (a, b) in enumerate(zip(ours[key], theirs[key])) if a != b} <= allowed
        ours[key] = [v for i, v in enumerate(ours[key]) if i not in allowed]
        theirs[key] = [v for i, v in enumerate(theirs[key]) if i not in allowed]
