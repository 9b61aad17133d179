"""Tests of the fixture generators themselves (tiny checkpoints, big streamed checkpoints, corpus, CodeShell reference)."""
from __future__ import annotations

import json
import unicodedata

import numpy as np
import pytest
import torch

from fixtures import ARCHES, bigmodels, tiny
from fixtures.corpus import tokenizer_corpus
from tests.codeshell_reference import codeshell_logits, load_codeshell_weights

NEEDS_SHARED = {"codeshell", "llama", "mistral"}


@pytest.fixture
def need_shared(request):
    """Request ``shared_fixtures`` only for architectures whose tokenizer comes from ../shared/fixtures."""
    def check(arch: str) -> None:
        if arch in NEEDS_SHARED:
            request.getfixturevalue("shared_fixtures")
    return check


def weights(folder) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder in their stored dtype."""
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    for f in sorted(folder.glob("*.bin")):
        out.update(torch.load(f, weights_only=True))
    return out


# ----------------------------------------------------------------------------------------------------------------------
# tiny checkpoints
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHES)
def test_same_seed_same_weights_across_dtype_fmt_shards(arch, tmp_path, need_shared):
    need_shared(arch)
    ref = weights(tiny.make_checkpoint(arch, tmp_path / "ref"))
    assert all(t.dtype == torch.float32 for t in ref.values())
    variants = {
        ("float32", "bin", 3): torch.float32,
        ("bfloat16", "safetensors", 2): torch.bfloat16,
        ("float16", "bin", 2): torch.float16,
    }
    for (dtype, fmt, shards), tdtype in variants.items():
        folder = tiny.make_checkpoint(arch, tmp_path / f"{dtype}-{fmt}-{shards}", dtype=dtype, fmt=fmt, shards=shards)
        index = folder / ("model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json")
        weight_map = json.loads(index.read_text())["weight_map"]
        assert len(set(weight_map.values())) == shards and set(weight_map) == set(ref)
        assert json.loads((folder / "config.json").read_text())["torch_dtype"] == dtype
        got = weights(folder)
        assert set(got) == set(ref)
        for name, t in got.items():
            assert t.dtype == tdtype, name
            # the variant is exactly the float32 reference cast to the variant's dtype
            assert torch.equal(t, ref[name].to(tdtype)), name
    other = weights(tiny.make_checkpoint(arch, tmp_path / "seed1", seed=1))
    assert not torch.equal(other["lm_head.weight" if "lm_head.weight" in ref else next(iter(ref))],
                           ref["lm_head.weight" if "lm_head.weight" in ref else next(iter(ref))])


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("shards", [1, 2])
def test_codeshell_phantom_wte(fmt, shards, tmp_path, shared_fixtures):
    folder = tiny.make_checkpoint("codeshell", tmp_path, fmt=fmt, shards=shards, phantom_wte=True)
    index_name = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    weight_map = json.loads((folder / index_name).read_text())["weight_map"]
    assert "transformer.wte.weight" in weight_map
    stored = weights(folder)
    assert "transformer.wte.weight" not in stored and "lm_head.weight" in stored
    assert set(weight_map) == set(stored) | {"transformer.wte.weight"}
    assert all((folder / f).is_file() for f in weight_map.values())
    logits = codeshell_logits(folder, [70000, 5, 17, 300])  # the reference falls back to lm_head for wte
    assert logits.shape == (4, 70144) and np.isfinite(logits).all()


def test_codeshell_layout(tmp_path, shared_fixtures):
    folder = tiny.make_checkpoint("codeshell", tmp_path, n_layer=3)
    cfg = json.loads((folder / "config.json").read_text())
    real = json.loads((shared_fixtures / "codeshell" / "config.json").read_text())
    assert cfg["n_layer"] == 3 and cfg["n_embd"] == 64 and cfg["num_query_groups"] == 2
    assert {k: v for k, v in cfg.items() if k not in tiny.CODESHELL_SIZE_KEYS | {"torch_dtype"}} == {
        k: v for k, v in real.items() if k not in tiny.CODESHELL_SIZE_KEYS | {"torch_dtype"}}
    w = weights(folder)
    assert w["transformer.h.2.attn.c_attn.weight"].shape == (64 + 2 * 32, 64)
    assert w["transformer.h.0.attn.rotary_emb.inv_freq"].shape == (8,)
    assert w["transformer.wte.weight"].shape == w["lm_head.weight"].shape == (70144, 64)
    assert not torch.equal(w["transformer.wte.weight"], w["lm_head.weight"])
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        assert (folder / name).read_bytes() == (shared_fixtures / "codeshell" / name).read_bytes()


@pytest.mark.parametrize("arch,tied", [("qwen2", True), ("gpt2", True), ("llama", False)])
def test_tied_models_do_not_save_lm_head(arch, tied, tmp_path, need_shared):
    need_shared(arch)
    w = weights(tiny.make_checkpoint(arch, tmp_path))
    assert ("lm_head.weight" in w) == (not tied)


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "gpt2"])
def test_tiny_hf_models_load_and_run(arch, tmp_path, need_shared):
    need_shared(arch)
    from transformers import AutoTokenizer

    folder = tiny.make_checkpoint(arch, tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    model = tiny.load_hf_model(arch, folder)
    tok = AutoTokenizer.from_pretrained(str(folder))
    ids = tok("def add(a, b):\n    return a + b  # it's 42")["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    assert logits.shape == (len(ids), cfg["vocab_size"]) and torch.isfinite(logits).all()
    assert logits.std() > 0.1  # not degenerate
    # the weights the model uses are the ones in the folder
    stored = weights(folder)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in stored.items() if k in state)

    if arch == "qwen2":
        assert cfg["bos_token_id"] == tok.convert_tokens_to_ids("<|endoftext|>")
        assert cfg["eos_token_id"] == tok.convert_tokens_to_ids("<|im_end|>") == tok.eos_token_id
        assert cfg["vocab_size"] % 64 == 0 and cfg["vocab_size"] >= len(tok) and 400 <= len(tok) <= 1000
        chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
        assert chat.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
        assert ids[0] != cfg["bos_token_id"]  # no BOS added
    if arch == "gpt2":
        eot = tok.convert_tokens_to_ids("<|endoftext|>")
        assert cfg["bos_token_id"] == cfg["eos_token_id"] == eot == len(tok) - 1 == cfg["vocab_size"] - 1
    if arch in ("llama", "mistral"):
        assert ids[0] == cfg["bos_token_id"] == 1 and cfg["vocab_size"] == len(tok) == 32000


def test_bin_and_sharded_checkpoints_give_same_hf_logits(tmp_path, shared_fixtures):
    ids = torch.tensor([[1, 450, 4996, 17354, 1701, 29916]])
    outs = []
    for fmt, shards in (("safetensors", 1), ("bin", 3)):
        model = tiny.load_hf_model("llama", tiny.make_checkpoint("llama", tmp_path / fmt, fmt=fmt, shards=shards))
        with torch.no_grad():
            outs.append(model(ids).logits)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_trained_bpe_is_deterministic_and_lossless(arch):
    a, b = tiny._train_byte_level_bpe(arch), tiny._train_byte_level_bpe(arch)
    assert a.to_str() == b.to_str()
    for text in tokenizer_corpus(300, specials=["<|endoftext|>"]):
        ids = a.encode(text).ids
        expect = unicodedata.normalize("NFC", text) if arch == "qwen2" else text
        assert a.decode(ids, skip_special_tokens=False) == expect


# ----------------------------------------------------------------------------------------------------------------------
# CodeShell reference forward
# ----------------------------------------------------------------------------------------------------------------------


def test_codeshell_logits_shape_and_finite(tmp_path, shared_fixtures):
    folder = tiny.make_checkpoint("codeshell", tmp_path, dtype="bfloat16", fmt="bin", shards=2)
    ids = [70000, 563, 1024, 9, 69999, 42]
    logits = codeshell_logits(folder, ids)
    assert logits.shape == (len(ids), 70144) and logits.dtype == np.float32
    assert np.isfinite(logits).all() and logits.std(axis=-1).min() > 0.1


def test_codeshell_reference_is_causal(tmp_path, shared_fixtures):
    folder = tiny.make_checkpoint("codeshell", tmp_path)
    ids = [70000, 12, 345, 6789, 10, 11, 12, 13]
    full = codeshell_logits(folder, ids)
    for t in (1, 3, 5):
        np.testing.assert_allclose(codeshell_logits(folder, ids[:t]), full[:t], rtol=1e-5, atol=1e-5)
    # a different later token changes later logits but not earlier ones
    other = codeshell_logits(folder, ids[:4] + [999] + ids[5:])
    np.testing.assert_allclose(other[:4], full[:4], rtol=1e-5, atol=1e-5)
    assert not np.allclose(other[4:], full[4:], atol=1e-3)


def _rewrite(folder, fn) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    state = fn(load_file(str(path)))
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt"})


def test_codeshell_reference_with_zero_blocks_is_embedding_then_ln_f(tmp_path, shared_fixtures):
    folder = tiny.make_checkpoint("codeshell", tmp_path, n_layer=1)

    def zero_blocks(state):
        for name in list(state):
            if any(s in name for s in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")):
                state[name] = torch.zeros_like(state[name])
        return state

    _rewrite(folder, zero_blocks)
    w = {k: v.double().numpy() for k, v in load_codeshell_weights(folder).items()}
    ids = [3, 70000, 3, 500]
    x = w["transformer.wte.weight"][ids]
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    h = (x - mu) / np.sqrt(var + 1e-5) * w["transformer.ln_f.weight"] + w["transformer.ln_f.bias"]
    expect = h @ w["lm_head.weight"].T
    np.testing.assert_allclose(codeshell_logits(folder, ids), expect, rtol=1e-5, atol=1e-5)


def test_codeshell_reference_gqa_matches_expanded_mha(tmp_path, shared_fixtures):
    """Query head j uses kv head j // (n_head / groups): duplicating the kv rows accordingly into an n_head-group
    (plain multi-head) checkpoint must not change the logits."""
    gqa = tiny.make_checkpoint("codeshell", tmp_path / "gqa")
    mha = tiny.make_checkpoint("codeshell", tmp_path / "mha", num_query_groups=4)
    E, H, G = 64, 4, 2
    hd = E // H
    src = weights(gqa)

    def expand(state):
        for name in list(state):
            if name.endswith(("attn.c_attn.weight", "attn.c_attn.bias")):
                t = src[name]
                q, k, v = t[:E], t[E : E + G * hd], t[E + G * hd :]
                heads = [j // (H // G) for j in range(H)]
                k = torch.cat([k[g * hd : (g + 1) * hd] for g in heads])
                v = torch.cat([v[g * hd : (g + 1) * hd] for g in heads])
                state[name] = torch.cat([q, k, v])
            else:
                state[name] = src[name]
        return state

    _rewrite(mha, expand)
    ids = [70000, 1, 2, 3, 400, 5000, 60000]
    np.testing.assert_allclose(codeshell_logits(mha, ids), codeshell_logits(gqa, ids), rtol=1e-5, atol=1e-5)


def test_codeshell_reference_linear_rope_scaling(tmp_path, shared_fixtures):
    """With rope_scaling linear factor 2, position p behaves like position p/2: a 1-token sequence is unaffected and
    a changed factor changes later logits."""
    plain = tiny.make_checkpoint("codeshell", tmp_path / "plain")
    scaled = tiny.make_checkpoint("codeshell", tmp_path / "scaled", rope_scaling={"type": "linear", "factor": 2.0})
    ids = [70000, 10, 20, 30]
    a, b = codeshell_logits(plain, ids), codeshell_logits(scaled, ids)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-5)
    assert not np.allclose(a[1:], b[1:], atol=1e-4)


# ----------------------------------------------------------------------------------------------------------------------
# big streamed checkpoints
# ----------------------------------------------------------------------------------------------------------------------


def test_bf16_rounding_matches_torch():
    x = np.random.default_rng(0).standard_normal(100_000, dtype=np.float32) * np.float32(5)
    x = np.concatenate([x, np.array([1.00390625, 1.01171875, -1.00390625, 0.0, -0.0, 1e-40, 3e38], np.float32)])
    expect = torch.from_numpy(x.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(bigmodels.f32_to_bf16_bits(x.copy()), expect)


def test_stream_writer_roundtrip(tmp_path):
    from safetensors import safe_open

    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.array([1.5, -2.0], np.float32)
    path = tmp_path / "x.safetensors"
    with bigmodels.SafetensorsStreamWriter(path, [("a", "F32", (3, 4)), ("b", "BF16", (2,))]) as w:
        w.write(a[:1])
        w.write(a[1:])
        w.write(bigmodels.f32_to_bf16_bits(b.copy()))
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    assert header_len % 8 == 0
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert torch.equal(f.get_tensor("a"), torch.from_numpy(a))
        assert torch.equal(f.get_tensor("b").float(), torch.from_numpy(b))
    with pytest.raises(ValueError):
        with bigmodels.SafetensorsStreamWriter(tmp_path / "y.safetensors", [("a", "F32", (2,))]) as w:
            w.write(np.zeros(1, np.float32))


@pytest.mark.parametrize("kind,overrides", [
    ("tinyllama", dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=256)),
    ("codeshell7b", dict(n_embd=128, n_layer=2, n_head=4, num_query_groups=2, n_inner=256)),
])
def test_random_checkpoint_small_run(kind, overrides, tmp_path, shared_fixtures):
    from safetensors import safe_open

    out = bigmodels.make_random_checkpoint(kind, tmp_path, 4 << 20, **overrides)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) >= 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    cfg = json.loads((out / "config.json").read_text())
    assert all(cfg[k] == v for k, v in overrides.items()) and cfg["torch_dtype"] == "bfloat16"
    seen, total = {}, 0
    for fname in files:
        with safe_open(str(out / fname), framework="pt") as f:
            assert f.metadata() == {"format": "pt"}
            for name in f.keys():
                t = f.get_tensor(name)
                assert t.dtype == torch.bfloat16 and index["weight_map"][name] == fname
                seen[name] = t
                total += t.numel() * 2
    assert set(seen) == set(index["weight_map"]) and total == index["metadata"]["total_size"]
    emb = seen["model.embed_tokens.weight" if kind == "tinyllama" else "transformer.wte.weight"].float()
    assert abs(emb.std().item() - 0.02) < 1e-3 and abs(emb.mean().item()) < 1e-3
    norm = seen["model.norm.weight" if kind == "tinyllama" else "transformer.ln_f.weight"].float()
    assert abs(norm.mean().item() - 1) < 0.01
    if kind == "codeshell7b":
        hd = 128 // 4
        inv = 1.0 / 10000 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
        assert torch.equal(seen["transformer.h.1.attn.rotary_emb.inv_freq"], inv.to(torch.bfloat16))
    # a second call finds the marker and writes nothing
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    bigmodels.make_random_checkpoint(kind, tmp_path, 4 << 20, **overrides)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes


# ----------------------------------------------------------------------------------------------------------------------
# corpus and CLI
# ----------------------------------------------------------------------------------------------------------------------


def test_tokenizer_corpus():
    specials = ["<|endoftext|>", "<fim_prefix>"]
    corpus = tokenizer_corpus(2000, specials=specials)
    assert len(corpus) == len(set(corpus)) == 2000 and all(corpus)
    assert corpus == tokenizer_corpus(2000, specials=specials)
    assert tokenizer_corpus(100, seed=0) == tokenizer_corpus(500, seed=0)[:100]
    assert tokenizer_corpus(100, seed=1) != tokenizer_corpus(100, seed=0)
    text = "\x00".join(corpus)
    for needle in ("\t", "\n", "    ", "def ", "#include", "=>", "echo", "'s", "'re", "'ll", "\u200d",
                   "\U0001f1eb\U0001f1f7", "你", "こ", "안", "Привет", "مرحبا", "é"):
        assert needle in text, needle
    assert any(s.isspace() for s in corpus) and any(s[0].isspace() and not s.isspace() for s in corpus)
    assert any(len(s) > 15 and s.isdigit() for s in corpus)
    assert all(any(sp in s for s in corpus) and any(sp in s and s != sp for s in corpus) for sp in specials)
    assert not any(sp in s for s in tokenizer_corpus(2000) for sp in specials)


def test_cli_tiny(tmp_path, capsys):
    from fixtures.__main__ import main

    assert main(["tiny", "gpt2", str(tmp_path), "--n-layer", "3", "--fmt", "bin", "--shards", "2"]) == 0
    assert str(tmp_path) in capsys.readouterr().out
    assert json.loads((tmp_path / "config.json").read_text())["n_layer"] == 3
    assert (tmp_path / "pytorch_model.bin.index.json").is_file()


@pytest.mark.parametrize("kind,sizes", [
    ("qwen7b", dict(hidden_size=64, num_attention_heads=4, kv_channels=16, intermediate_size=256, num_hidden_layers=2)),
    ("qwen3moe", dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=128,
                      moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2, num_hidden_layers=2)),
])
def test_benchmark_shapes_convert_and_run(tmp_path, shared_fixtures, kind, sizes):
    """The benchmark's Qwen checkpoints, written from the architecture description (shrunk here), are what the converter
    expects: they convert (Qwen's tiktoken vocabulary, the real vocab_size) and the runtime evaluates them."""
    from converter.convert import convert_model
    from runtime.api import Llama
    folder = bigmodels.make_random_checkpoint(kind, tmp_path / kind, **sizes)
    out = tmp_path / f"{kind}.gguf"
    convert_model(folder, outtype="f16", outfile=out, info=lambda m: None)
    llm = Llama(str(out), n_ctx=32, verbose=False)
    llm.eval([1, 2, 3])
    assert np.isfinite(llm.scores[-1]).all() and llm.scores.shape[1] == 151936
