"""The architecture descriptions (archs/): registered once by Hugging Face class and GGUF name, tensor names from
gguf-py's table for that architecture, recipes made of parts the engine has, and the engine description handed to C by
field name (a missing, unknown or extra field, or a part the engine lacks, is an error at load)."""
from __future__ import annotations

import json
import re

import pytest

import archs
import native
from archs.base import gguf_tensors
from common.errors import UserError
from fixtures import make_checkpoint
from fixtures.qwen1 import make_qwen1_checkpoint

FAMILIES = {"llama": "llama", "mistral": "llama", "mixtral": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
            "qwen3moe": "qwen3moe", "starcoder2": "starcoder2", "gpt2": "gpt2", "codeshell": "codeshell", "qwen": "qwen",
            "gemma2": "gemma2", "gemma3": "gemma3", "gemma3mm": "gemma3",
            "phi3": "phi3"}


@pytest.fixture(scope="module")
def configs(tmp_path_factory, shared_fixtures):
    root = tmp_path_factory.mktemp("archs")
    out = {}
    for fixture in FAMILIES:
        folder = (make_qwen1_checkpoint(root / fixture, vocab_size=1024) if fixture == "qwen"
                  else make_checkpoint(fixture, root / fixture))
        out[fixture] = json.loads((folder / "config.json").read_text())
    return out


@pytest.mark.parametrize("fixture", FAMILIES)
def test_tensor_names_are_gguf_pys_for_the_architecture(configs, fixture):
    model = archs.for_config(configs[fixture])
    assert model.gguf_arch == FAMILIES[fixture]
    allowed = gguf_tensors(model.gguf_arch)
    names = [spec.gguf for spec in model.tensors(set())]
    assert names and len(names) == len(set(names))
    for name in names:
        stem, _, suffix = name.rpartition(".")
        template = stem.replace(stem.split(".")[1], "{bid}", 1) if stem.startswith("blk.") else stem
        assert suffix in ("weight", "bias") and template in allowed, name


def test_every_gguf_architecture_has_one_description_and_a_recipe_the_engine_can_run():
    assert archs.gguf_names() == ["codeshell", "gemma2", "gemma3", "gpt2", "llama", "phi3", "qwen", "qwen2", "qwen3", "qwen3moe",
                                  "starcoder2"]
    for name in archs.gguf_names():
        recipe = archs.recipe(name)
        for part, values in native.PARTS.items():
            assert getattr(recipe, part) in values, (name, part)
    with pytest.raises(UserError, match="unsupported architecture 'mamba'; supported: codeshell, gemma2, gemma3, gpt2, llama"):
        archs.recipe("mamba")


def _description(**changes):
    d = dict(norm="rms", rope="neox", ffn="swiglu", n_vocab=8, n_embd=8, n_layer=1, n_head=1, n_head_kv=1,
             head_dim=8, n_ff=8, n_rot=8, rope_base=1e4, rope_freq_scale=1.0, eps=1e-5, n_expert=0, n_expert_used=0,
             n_ff_exp=0, n_swa=0, swa_period=0, embd_scale=1.0, rope_base_swa=1e4, rope_freq_scale_swa=1.0,
             rope_attn_factor=1.0, n_ctx_orig=0, attn_scale=8 ** -0.5, attn_softcap=0.0, final_softcap=0.0)
    d.update(changes)
    return d


@pytest.mark.parametrize("change,message", [
    (dict(rope="yarn"), "the engine has no rope 'yarn'"),
    (dict(ffn="reglu"), "the engine has no ffn 'reglu'"),
    (dict(sliding_window=4), "has 28 fields, the engine takes 27"),
])
def test_engine_description_errors(change, message):
    with pytest.raises(ValueError, match=message):
        native.engine_new(_description(**change), [])


def test_engine_description_by_name_in_c():
    fields = _description(norm=0, rope=2, ffn=0)
    del fields["eps"]
    fields["epsilon"] = 1e-5
    with pytest.raises(ValueError, match="lacks eps"):
        native._core.engine_new(fields, [])
    with pytest.raises(ValueError, match="unknown part"):
        native._core.engine_new(_description(norm=0, rope=2, ffn=9), [])
    for bad in (dict(attn_softcap=-1.0), dict(final_softcap=float("nan")), dict(attn_scale=0.0),
                dict(rope_attn_factor=float("inf") * 0), dict(rope_freq_scale_swa=-1.0), dict(n_ctx_orig=-1)):
        with pytest.raises(ValueError, match="unknown part"):
            native._core.engine_new(_description(norm=0, rope=2, ffn=0, **bad), [])
    with pytest.raises(ValueError, match="missing tensor"):  # a complete description gets as far as the tensors
        native._core.engine_new(_description(norm=0, rope=2, ffn=0), [])
    for experts in (dict(n_expert=8, n_expert_used=2, n_ff_exp=-30000), dict(n_expert=8, n_expert_used=9, n_ff_exp=8),
                    dict(n_expert=0, n_expert_used=2, n_ff_exp=0), dict(n_expert=5000, n_expert_used=2, n_ff_exp=8)):
        with pytest.raises(ValueError, match="inconsistent expert counts"):  # sizes of the forward's buffers
            native._core.engine_new(_description(norm=0, rope=2, ffn=0, **experts), [])


@pytest.mark.parametrize("fixture,key", [("qwen3moe", "num_local_experts"), ("phi3", "sliding_window")])
@pytest.mark.parametrize("value", ["float16", -1, 2.5, True])
def test_optional_counts_must_be_non_negative_integers(configs, fixture, key, value):
    """make fuzz: num_local_experts "float16" in a Qwen3-MoE config reached int() and raised ValueError (a traceback
    where the CLI owes one line)."""
    config = dict(configs[fixture], **{key: value})
    with pytest.raises(UserError, match=f"config.json: {key} must be a non-negative integer, got {value!r}"):
        model = archs.for_config(config)
        model.hparams()


def test_longrope_trained_context_of_one_is_refused(configs):
    """make fuzz: original_max_position_embeddings 1 made LongRoPE's attention factor divide by ln 1."""
    config = dict(configs["phi3"], original_max_position_embeddings=1)  # the fixture's rope is LongRoPE
    with pytest.raises(UserError, match="original_max_position_embeddings 1 .LongRoPE needs"):
        archs.for_config(config).hparams()


@pytest.mark.parametrize("rope_scaling,message", [
    (["linear", 2.0], "rope_scaling must be an object"),
    ({"type": "linear", "factor": "2"}, "rope_scaling factor must be a positive number, got '2'"),
    ({"type": "linear"}, "rope_scaling factor must be a positive number, got None")])
def test_codeshell_rope_scaling_is_checked(configs, rope_scaling, message):
    """CodeShell read rope_scaling unchecked: a list raised AttributeError, a missing or string factor KeyError or
    ValueError."""
    with pytest.raises(UserError, match=f"config.json: {re.escape(message)}"):
        archs.for_config(dict(configs["codeshell"], rope_scaling=rope_scaling)).hparams()
