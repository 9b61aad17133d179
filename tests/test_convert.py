"""`toolkit convert` on tiny checkpoints of every architecture: keys, tensor names, shapes, types and data read back with
gguf-py, against the source weights read with safetensors/torch and the transforms llama.cpp documents."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gguf import GGUFReader
from safetensors.torch import load_file

from converter.convert import convert_model
from fixtures import make_checkpoint
from tests.helpers import fields, tensors


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, shared_fixtures):
    """tiny(arch, **kw) -> folder, generated once per module per argument set."""
    cache = {}

    def get(arch, **kw):
        key = (arch, tuple(sorted(kw.items())))
        if key not in cache:
            folder = tmp_path_factory.mktemp(f"{arch}-ckpt")
            cache[key] = make_checkpoint(arch, folder, **kw)
        return cache[key]
    return get


def source_state(folder) -> dict[str, np.ndarray]:
    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(f))
    for f in sorted(folder.glob("*.bin")):
        state.update(torch.load(f, weights_only=True))
    return {k: v.float().numpy() for k, v in state.items()}


def hf_rotate_half_to_pairs(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's documented q/k permutation: rows (heads, 2, head_dim/2) with the middle axes swapped."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def expected_llama(cfg, state):
    H, KV = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    permute = cfg["architectures"][0] != "Qwen2ForCausalLM"
    out = {"token_embd.weight": state["model.embed_tokens.weight"], "output_norm.weight": state["model.norm.weight"]}
    if "lm_head.weight" in state:
        out["output.weight"] = state["lm_head.weight"]
    names = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
             "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
             "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    for i in range(cfg["num_hidden_layers"]):
        for g, h in names.items():
            for suffix in ("weight", "bias"):
                src = state.get(f"model.layers.{i}.{h}.{suffix}")
                if src is None:
                    continue
                if permute and g in ("attn_q", "attn_k"):
                    src = hf_rotate_half_to_pairs(src, H if g == "attn_q" else KV)
                out[f"blk.{i}.{g}.{suffix}"] = src
    return out


def expected_gpt2(cfg, state):
    out = {"token_embd.weight": state["transformer.wte.weight"], "position_embd.weight": state["transformer.wpe.weight"],
           "output_norm.weight": state["transformer.ln_f.weight"], "output_norm.bias": state["transformer.ln_f.bias"]}
    names = {"attn_norm": "ln_1", "attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj", "ffn_norm": "ln_2",
             "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj"}
    for i in range(cfg["n_layer"]):
        for g, h in names.items():
            w = state[f"transformer.h.{i}.{h}.weight"]
            out[f"blk.{i}.{g}.weight"] = w.T if w.ndim == 2 else w  # Conv1D stores [in, out]
            out[f"blk.{i}.{g}.bias"] = state[f"transformer.h.{i}.{h}.bias"]
    return out


def expected_codeshell(cfg, state):
    out = {"output_norm.weight": state["transformer.ln_f.weight"], "output_norm.bias": state["transformer.ln_f.bias"],
           "output.weight": state.get("lm_head.weight", state.get("transformer.wte.weight"))}
    if "transformer.wte.weight" in state:
        out["token_embd.weight"] = state["transformer.wte.weight"]
    names = {"attn_norm": "ln_1", "attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj", "ffn_norm": "ln_2",
             "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj"}
    for i in range(cfg["n_layer"]):
        for g, h in names.items():
            for suffix in ("weight", "bias"):
                out[f"blk.{i}.{g}.{suffix}"] = state[f"transformer.h.{i}.{h}.{suffix}"]
    return out


EXPECTED = {"llama": expected_llama, "mistral": expected_llama, "qwen2": expected_llama,
            "gpt2": expected_gpt2, "codeshell": expected_codeshell}


def expected_keys(arch, cfg):
    if arch == "codeshell":
        return {"general.architecture": "codeshell", "codeshell.context_length": cfg["n_positions"],
                "codeshell.embedding_length": cfg["n_embd"], "codeshell.feed_forward_length": cfg["n_inner"],
                "codeshell.block_count": cfg["n_layer"], "codeshell.attention.head_count": cfg["n_head"],
                "codeshell.attention.head_count_kv": cfg["num_query_groups"],
                "codeshell.attention.layer_norm_epsilon": cfg["layer_norm_epsilon"],
                "codeshell.rope.freq_base": 10000.0, "codeshell.rope.scaling.type": "linear",
                "codeshell.rope.scaling.factor": 1.0, "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "codeshell",
                "tokenizer.ggml.bos_token_id": 70000, "tokenizer.ggml.eos_token_id": 70000}
    if arch == "gpt2":
        return {"general.architecture": "gpt2", "gpt2.context_length": cfg["n_positions"],
                "gpt2.embedding_length": cfg["n_embd"], "gpt2.feed_forward_length": 4 * cfg["n_embd"],
                "gpt2.block_count": cfg["n_layer"], "gpt2.attention.head_count": cfg["n_head"],
                "gpt2.attention.layer_norm_epsilon": cfg["layer_norm_epsilon"], "tokenizer.ggml.model": "gpt2",
                "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.bos_token_id": cfg["bos_token_id"]}
    a = "qwen2" if arch == "qwen2" else "llama"
    keys = {"general.architecture": a, f"{a}.context_length": cfg["max_position_embeddings"],
            f"{a}.embedding_length": cfg["hidden_size"], f"{a}.block_count": cfg["num_hidden_layers"],
            f"{a}.feed_forward_length": cfg["intermediate_size"],
            f"{a}.attention.head_count": cfg["num_attention_heads"],
            f"{a}.attention.head_count_kv": cfg["num_key_value_heads"],
            f"{a}.attention.layer_norm_rms_epsilon": cfg["rms_norm_eps"], f"{a}.rope.freq_base": cfg["rope_theta"]}
    if a == "llama":
        keys.update({"llama.vocab_size": cfg["vocab_size"], "llama.rope.dimension_count":
                     cfg["hidden_size"] // cfg["num_attention_heads"], "tokenizer.ggml.model": "llama",
                     "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
                     "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.add_bos_token": True})
    else:
        keys.update({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2"})
    return keys


@pytest.mark.parametrize("arch", ["codeshell", "llama", "mistral", "qwen2", "gpt2"])
@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_convert_keys_shapes_and_data(tiny, tmp_path, arch, outtype):
    folder = tiny(arch)
    cfg = json.loads((folder / "config.json").read_text())
    out = tmp_path / "m.gguf"
    convert_model(folder, outtype=outtype, outfile=out)
    r = GGUFReader(out)
    kv = fields(r)
    for key, value in expected_keys(arch, cfg).items():
        assert kv[key] == (pytest.approx(value) if isinstance(value, float) else value), key
    assert kv["general.file_type"] == {"f32": 0, "f16": 1}[outtype]
    assert kv["general.name"] == folder.name
    tokens = kv["tokenizer.ggml.tokens"]
    assert len(tokens) == cfg["vocab_size"] == len(kv["tokenizer.ggml.token_type"])
    got = tensors(r)
    expected = EXPECTED[arch](cfg, source_state(folder))
    assert set(got) == set(expected)
    for name, src in expected.items():
        shape, ttype, data = got[name]
        assert shape == src.shape, name
        if outtype == "f32" or src.ndim == 1 or name == "position_embd.weight":
            assert ttype == "F32", name
            np.testing.assert_array_equal(data, src.astype(np.float32), err_msg=name)
        else:
            assert ttype == "F16", name
            np.testing.assert_array_equal(data.view(np.uint16), src.astype(np.float16).view(np.uint16), err_msg=name)


def test_codeshell_vocab(tiny, tmp_path, shared_fixtures):
    folder = tiny("codeshell")
    out = tmp_path / "v.gguf"
    convert_model(folder, outfile=out, vocab_only=True)
    r = GGUFReader(out)
    kv = fields(r)
    assert r.tensors == [] or len(r.tensors) == 0
    tok = json.loads((shared_fixtures / "codeshell" / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    tokens, types = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"]
    assert len(tokens) == 70144
    for text, i in list(vocab.items())[:2000]:
        assert tokens[i] == text and types[i] == 1
    for added in tok["added_tokens"]:
        assert tokens[added["id"]] == added["content"] and types[added["id"]] == 3  # control
    assert tokens[70020:] == [f"[PAD{i}]" for i in range(70020, 70144)]
    assert set(types[70020:]) == {5}  # unused
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    assert kv["tokenizer.ggml.merges"] == merges
    assert kv["tokenizer.ggml.add_bos_token"] is False


def test_llama_vocab_from_sentencepiece(tiny, tmp_path, shared_fixtures):
    import sentencepiece as spm
    folder = tiny("llama")
    out = tmp_path / "v.gguf"
    convert_model(folder, outfile=out, vocab_only=True)
    kv = fields(GGUFReader(out))
    sp = spm.SentencePieceProcessor(model_file=str(shared_fixtures / "llama-spm" / "tokenizer.model"))
    assert kv["tokenizer.ggml.tokens"] == [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    np.testing.assert_allclose(kv["tokenizer.ggml.scores"], [sp.get_score(i) for i in range(sp.get_piece_size())])
    types = kv["tokenizer.ggml.token_type"]
    assert types[0] == 2 and types[1] == 3 and types[2] == 3  # <unk>, <s>, </s>
    assert set(types[3:259]) == {6}  # <0x00>..<0xFF> byte tokens
    assert "tokenizer.ggml.merges" not in kv


def test_chat_template_is_exported(tiny, tmp_path):
    folder = tiny("qwen2")
    template = json.loads((folder / "tokenizer_config.json").read_text())["chat_template"]
    out = tmp_path / "v.gguf"
    convert_model(folder, outfile=out, vocab_only=True)
    assert fields(GGUFReader(out))["tokenizer.chat_template"] == template


def test_phantom_wte_codeshell(tiny, tmp_path):
    """CodeShell-7B ships lm_head but not wte, which its index still lists: only `output` is written."""
    folder = tiny("codeshell", phantom_wte=True)
    out = tmp_path / "m.gguf"
    convert_model(folder, outtype="f32", outfile=out)
    got = tensors(GGUFReader(out))
    assert "token_embd.weight" not in got
    np.testing.assert_array_equal(got["output.weight"][2], source_state(folder)["lm_head.weight"])


def test_bf16_output(tiny, tmp_path):
    folder = tiny("llama", dtype="bfloat16")
    out = tmp_path / "m.gguf"
    convert_model(folder, outtype="bf16", outfile=out)
    r = GGUFReader(out)
    assert fields(r)["general.file_type"] == 32
    got = tensors(r)
    src = load_file(next(folder.glob("*.safetensors")))["model.layers.0.mlp.up_proj.weight"]
    shape, ttype, data = got["blk.0.ffn_up.weight"]
    assert ttype == "BF16"
    assert data.tobytes() == src.view(torch.int16).numpy().tobytes()


LAYOUTS = [("safetensors", 1), ("safetensors", 3), ("bin", 1), ("bin", 3)]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_layouts_give_identical_data(tiny, tmp_path, dtype):
    """Single and sharded safetensors and .bin files of the same weights give byte-identical GGUF files; and the f32
    output of an f16/bf16 checkpoint holds exactly the stored values."""
    files = []
    for fmt, shards in LAYOUTS:
        folder = tiny("llama", dtype=dtype, fmt=fmt, shards=shards)
        out = tmp_path / f"{fmt}{shards}.gguf"
        convert_model(folder, outtype="f32", outfile=out, model_name="same")
        files.append(out.read_bytes())
    assert all(f == files[0] for f in files[1:])
    got = tensors(GGUFReader(tmp_path / "safetensors1.gguf"))
    state = source_state(tiny("llama", dtype=dtype))
    for hf, name in (("model.layers.1.mlp.down_proj.weight", "blk.1.ffn_down.weight"),
                     ("model.embed_tokens.weight", "token_embd.weight")):
        assert got[name][2].tobytes() == state[hf].astype(np.float32).tobytes()


def test_cli_ftype_argument_and_default_name(tiny, tmp_path):
    import shutil

    from tests.helpers import run_toolkit
    folder = tmp_path / "model"
    shutil.copytree(tiny("gpt2"), folder)
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    p = run_toolkit("convert", folder, "0")
    assert p.returncode == 0, p.stderr
    assert (folder / "ggml-model-f32.gguf").is_file()
    p = run_toolkit("convert", folder, "1")
    assert p.returncode == 0, p.stderr
    r = GGUFReader(folder / "ggml-model-f16.gguf")
    assert fields(r)["general.file_type"] == 1
    after = {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if not p.name.endswith(".gguf")}
    assert after == before  # inputs untouched


def test_memory_is_bounded_by_about_one_tensor(tmp_path, shared_fixtures):
    """A 680 MB bf16 checkpoint converts with a peak RSS far below the model size: about the interpreter, one
    128 MB embedding matrix at most, and the chunk buffers."""
    import sys

    from benchmarks.common import measure
    from fixtures import make_random_checkpoint
    from tests.helpers import run_toolkit
    folder = make_random_checkpoint("tinyllama", tmp_path / "ckpt", shard_bytes=256 << 20, num_hidden_layers=5)
    model_mb = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**20
    assert model_mb > 600
    run = measure([sys.executable, "-m", "toolkit", "convert", str(folder), "1", "--outfile", str(tmp_path / "m.gguf")])
    assert run.peak_rss_mb < 300, f"peak RSS {run.peak_rss_mb:.0f} MB for a {model_mb:.0f} MB model"
    p = run_toolkit("convert", folder, "1", "--outfile", tmp_path / "m2.gguf")
    err = p.stderr
    # not a terminal: one plain progress line per tensor
    assert "[ 1/48] token_embd.weight" in err and "[48/48] output.weight" in err


def test_info_summarises_a_file(tiny, tmp_path):
    from tests.helpers import run_toolkit
    out = tmp_path / "m.gguf"
    convert_model(tiny("qwen2"), outtype="f16", outfile=out)
    p = run_toolkit("info", out)
    assert p.returncode == 0, p.stderr
    assert "general.architecture" in p.stdout and "qwen2" in p.stdout and "tokenizer.ggml.tokens" in p.stdout
    n = len(GGUFReader(out).tensors)
    assert f"{n} tensors" in p.stdout and "bits per weight" in p.stdout
    assert "qwen2, tokenizer gpt2 (pre-tokenizer qwen2), trained context 256;" in p.stdout
    bad = run_toolkit("info", tmp_path / "missing.gguf")
    assert bad.returncode == 1 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("arch,dtype", [("qwen", "float32"), ("qwen3moe", "float32"), ("qwen3moe", "bfloat16")])
def test_layouts_give_identical_data_for_stacked_experts_and_tiktoken(tmp_path, shared_fixtures, arch, dtype):
    """The same for Qwen1 (its tiktoken vocabulary, its own tensor names) and Qwen3-MoE, whose experts are stacked
    into one tensor per matrix from tensors that the shards split among themselves; the stack holds every expert's
    stored values in order."""
    from fixtures.qwen1 import make_qwen1_checkpoint
    files = []
    for fmt, shards in LAYOUTS:
        folder = tmp_path / f"{fmt}{shards}"
        if arch == "qwen":
            make_qwen1_checkpoint(folder, dtype=dtype, fmt=fmt, shards=shards)
        else:
            make_checkpoint(arch, folder, dtype=dtype, fmt=fmt, shards=shards)
        convert_model(folder, outtype="f32", outfile=tmp_path / f"{fmt}{shards}.gguf", model_name="same",
                      info=lambda m: None)
        files.append((tmp_path / f"{fmt}{shards}.gguf").read_bytes())
    assert all(f == files[0] for f in files[1:])
    if arch == "qwen3moe":
        got = tensors(GGUFReader(tmp_path / "safetensors1.gguf"))["blk.1.ffn_down_exps.weight"][2]
        state = source_state(tmp_path / "safetensors1")
        want = np.stack([state[f"model.layers.1.mlp.experts.{j}.down_proj.weight"] for j in range(8)])
        assert got.tobytes() == want.astype(np.float32).tobytes()


def test_gemma3_multimodal_text_model_under_both_transformers_names(tmp_path, shared_fixtures, caplog):
    """Gemma3ForConditionalGeneration (Gemma 3 4B-27B): its text model as transformers 5 saves it (model.language_model.*,
    lm_head) and as transformers 4 did (language_model.model.*, language_model.lm_head): the same file, the vision tower
    and projector left out without a warning, the text config's settings (linear rope scaling on the global layers)."""
    import shutil

    from safetensors.numpy import load_file, save_file
    t5 = make_checkpoint("gemma3mm", tmp_path / "t5")
    t4 = tmp_path / "t4"
    shutil.copytree(t5, t4)
    state = load_file(str(t4 / "model.safetensors"))
    renamed = {("language_model.model." + k[len("model.language_model."):]) if k.startswith("model.language_model.")
               else k[len("model."):] if k.startswith("model.") else "language_model." + k: v for k, v in state.items()}
    assert any(k.startswith("vision_tower.") for k in renamed)
    save_file(renamed, str(t4 / "model.safetensors"))
    for folder in (t5, t4):
        convert_model(folder, outtype="f32", outfile=tmp_path / f"{folder.name}.gguf", model_name="same",
                      info=lambda m: None)
    assert (tmp_path / "t5.gguf").read_bytes() == (tmp_path / "t4.gguf").read_bytes()
    f = fields(GGUFReader(tmp_path / "t5.gguf"))
    assert f["gemma3.rope.scaling.type"] == "linear" and f["gemma3.rope.scaling.factor"] == 8.0
    assert "ignoring" not in caplog.text
