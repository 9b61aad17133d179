"""A GGUF model opened for inference: its architecture's recipe (archs/), hyper-parameters and weights, memory-mapped
(no copy, no dequantized copy); the native engine (runtime/arch) reads the tensors in place."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import Keys

import archs
from archs.base import MAX_LAYERS
import native
from common.errors import UserError
from common.ggufio import GGUFFile, TensorEntry
from common.ggufsplit import open_gguf


class Weight:
    """A 1-D or 2-D tensor of the file, kept in its stored type."""

    def __init__(self, g: GGUFFile, entry: TensorEntry):
        self.name = entry.info.name
        self.type: T = entry.info.ggml_type
        self.shape = entry.info.shape          # numpy order: (rows, cols) for matrices
        self.data = g.data(entry)              # uint8 view of the mapped file

    @property
    def rows(self) -> int:
        """Rows of the matrix the engine sees: a 3-D tensor (experts stacked) is its experts' rows one after the other."""
        return int(np.prod(self.shape[:-1], dtype=np.int64)) if len(self.shape) > 1 else 1

    @property
    def cols(self) -> int:
        return self.shape[-1]


@dataclass(frozen=True)
class HParams:
    arch: str
    n_vocab: int
    n_ctx_train: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    head_dim: int
    n_rot: int
    rope_base: float
    rope_freq_scale: float
    eps: float
    n_expert: int = 0        # mixture of experts: experts per layer, used per token, width of one
    n_expert_used: int = 0
    n_ff_exp: int = 0
    n_swa: int = 0           # sliding window of the sliding layers (0: none), their period, their rope base and scale
    swa_period: int = 0
    rope_base_swa: float = 10000.0
    rope_freq_scale_swa: float = 1.0
    rope_attn_factor: float = 1.0  # cos/sin scale (LongRoPE), and the context beyond which its long factors apply
    n_ctx_orig: int = 0
    attn_scale: float = 0.0  # q·k scale
    attn_softcap: float = 0.0  # soft-capping of attention scores and of logits (0: none)
    final_softcap: float = 0.0


MAX_WIDTH = 1 << 24    # any width of a block (n_embd, n_ff, head size, heads): far above every real model
MAX_CONTEXT = 1 << 40


class _Keys:
    """One file's hyper-parameters by gguf-py's key templates for `arch`, read with their type and range checked: an
    integer key holds an integer (not a bool, string or array), a float key a finite number."""

    def __init__(self, g: GGUFFile, arch: str):
        self.g, self.arch = g, arch

    def name(self, key: str) -> str:
        return key.format(arch=self.arch)

    def raw(self, key: str):
        v = self.g.value(self.name(key))
        return v.item() if isinstance(v, np.generic) else v

    def _fail(self, key: str, what: str, v) -> UserError:
        shown = f"an array of {len(v)}" if isinstance(v, (list, np.ndarray)) else repr(v)
        return UserError(f"{self.g.path.name}: {self.name(key)} must be {what}, got {shown}")

    def int(self, key: str, default=None, low: int = 1, high: int = MAX_WIDTH) -> int:
        v = self.raw(key)
        if v is None:
            if default is None:
                raise UserError(f"{self.g.path.name}: missing {self.name(key)}")
            v = default
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            raise self._fail(key, f"an integer from {low} to {high}", v)
        return v

    def float(self, key: str, default: float | None = None, positive: bool = True) -> float:
        v = self.raw(key)
        if v is None:
            if default is None:
                raise UserError(f"{self.g.path.name}: missing {self.name(key)}")
            v = default
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or \
                (v <= 0 if positive else v < 0):
            raise self._fail(key, "a finite number " + ("> 0" if positive else "≥ 0"), v)
        return float(v)


def _hparams(g: GGUFFile, arch: str, recipe: archs.Recipe, n_vocab: int) -> HParams:
    """The hyper-parameters, by gguf-py's key names for `arch`, each checked for type and range and against the
    others (heads divide the width, kv heads divide the heads, the rotated part fits a head) before the engine sees
    any of them."""
    k, where = _Keys(g, arch), g.path.name
    n_embd, n_head = k.int(Keys.LLM.EMBEDDING_LENGTH), k.int(Keys.Attention.HEAD_COUNT)
    if k.raw(Keys.Attention.KEY_LENGTH) is None and n_embd % n_head:
        raise UserError(f"{where}: {k.name(Keys.LLM.EMBEDDING_LENGTH)} ({n_embd}) is not a multiple of "
                        f"{k.name(Keys.Attention.HEAD_COUNT)} ({n_head})")
    head_dim = k.int(Keys.Attention.KEY_LENGTH, n_embd // n_head)
    if k.int(Keys.Attention.VALUE_LENGTH, head_dim) != head_dim:
        raise UserError(f"{where}: value heads of another size than key heads are not supported")
    n_head_kv = k.int(Keys.Attention.HEAD_COUNT_KV, n_head)
    if n_head % n_head_kv:
        raise UserError(f"{where}: {k.name(Keys.Attention.HEAD_COUNT)} ({n_head}) is not a multiple of "
                        f"{k.name(Keys.Attention.HEAD_COUNT_KV)} ({n_head_kv})")
    n_rot = k.int(Keys.Rope.DIMENSION_COUNT, head_dim, low=0, high=head_dim)
    if n_rot % 2:
        raise UserError(f"{where}: {k.name(Keys.Rope.DIMENSION_COUNT)} must be even, got {n_rot}")
    scaling = k.raw(Keys.Rope.SCALING_TYPE)
    if scaling not in (None, "none", "linear"):
        raise UserError(f"{where}: rope scaling {scaling!r} is not supported (supported: linear)")
    scale = 1.0 / k.float(Keys.Rope.SCALING_FACTOR, 1.0) if scaling == "linear" else 1.0
    eps_key = Keys.Attention.LAYERNORM_RMS_EPS if k.raw(Keys.Attention.LAYERNORM_RMS_EPS) is not None \
        else Keys.Attention.LAYERNORM_EPS
    if k.raw(eps_key) is None:
        raise UserError(f"{where}: missing the norm epsilon of {arch}")
    eps = k.float(eps_key)
    n_ff = k.int(Keys.LLM.FEED_FORWARD_LENGTH)
    if recipe.ffn_halved and n_ff % 2:
        raise UserError(f"{where}: {k.name(Keys.LLM.FEED_FORWARD_LENGTH)} must be even for {arch}, got {n_ff}")
    n_expert = k.int(Keys.LLM.EXPERT_COUNT, 0, low=0, high=1024)
    extra: dict[str, object] = {}
    if n_expert:
        extra = dict(n_expert=n_expert, n_expert_used=k.int(Keys.LLM.EXPERT_USED_COUNT, high=n_expert),
                     n_ff_exp=k.int(Keys.LLM.EXPERT_FEED_FORWARD_LENGTH, n_ff))
    for field, key, default in (("attn_softcap", Keys.LLM.ATTN_LOGIT_SOFTCAPPING, recipe.attn_softcap),
                                ("final_softcap", Keys.LLM.FINAL_LOGIT_SOFTCAPPING, recipe.final_softcap)):
        if default is None and k.raw(key) is not None:
            raise UserError(f"{where}: {k.name(key)} (logit soft-capping) is not supported for {arch}")
        extra[field] = k.float(key, default, positive=False) if default is not None else 0.0
    # sliding windows only where the architecture has sliding layers (llama.cpp ignores the key elsewhere)
    n_swa = k.int(Keys.Attention.SLIDING_WINDOW, 0, low=0, high=MAX_CONTEXT) if recipe.swa_period else 0
    if n_swa:
        if isinstance(k.raw(Keys.Attention.SLIDING_WINDOW_PATTERN), (list, np.ndarray)):
            raise UserError(f"{where}: a per-layer sliding-window pattern is not supported")
        extra.update(n_swa=n_swa, swa_period=k.int(Keys.Attention.SLIDING_WINDOW_PATTERN, recipe.swa_period,
                                                   low=0, high=MAX_LAYERS))
    rope_base = k.float(Keys.Rope.FREQ_BASE, 10000.0)
    # sliding layers rotate as the others, or with llama.cpp's defaults for them (base 10000, no frequency scaling)
    swa_base, swa_scale = (rope_base, scale) if recipe.swa_rope_shared else (10000.0, 1.0)
    n_ctx_train, n_layer = k.int(Keys.LLM.CONTEXT_LENGTH, high=MAX_CONTEXT), k.int(Keys.LLM.BLOCK_COUNT, high=MAX_LAYERS)
    vocab_key = k.raw(Keys.LLM.VOCAB_SIZE)
    if vocab_key is not None and k.int(Keys.LLM.VOCAB_SIZE, high=2**31 - 1) != n_vocab:
        raise UserError(f"{where}: {k.name(Keys.LLM.VOCAB_SIZE)} is {vocab_key} but the tokenizer has {n_vocab} tokens")
    query_dim = recipe.query_scale_dim(n_layer, n_embd, n_head, head_dim)
    return HParams(
        arch=arch, n_vocab=n_vocab, n_ctx_train=n_ctx_train, n_embd=n_embd,
        n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv,
        n_ff=n_ff // 2 if recipe.ffn_halved else n_ff, head_dim=head_dim,
        n_rot=n_rot, rope_base=rope_base, rope_freq_scale=scale,
        rope_base_swa=k.float(Keys.Rope.FREQ_BASE_SWA, swa_base), rope_freq_scale_swa=swa_scale,
        eps=eps, rope_attn_factor=k.float(Keys.Rope.SCALING_ATTN_FACTOR, 1.0),
        n_ctx_orig=k.int(Keys.Rope.SCALING_ORIG_CTX_LEN, n_ctx_train, low=0, high=MAX_CONTEXT),
        attn_scale=float(1.0 / np.sqrt(np.float32(query_dim))) if query_dim > 0 else 0.0, **extra)


def vector_lengths(hp: HParams) -> dict[str, int]:
    """The length of every 1-D tensor the engine reads (norm weights and biases, matrix biases, q/k norms, rope
    factors), by name with a layer's `blk.N.` left out; native/engine.c's LAYER_TENSORS checks the same again."""
    qd, kvd = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim
    embd = ("attn_norm.weight", "attn_norm.bias", "ffn_norm.weight", "ffn_norm.bias", "attn_output.bias",
            "ffn_down.bias", "post_attention_norm.weight", "post_ffw_norm.weight", "output_norm.weight",
            "output_norm.bias")
    return {**dict.fromkeys(embd, hp.n_embd), "attn_qkv.bias": qd + 2 * kvd, "attn_q.bias": qd, "attn_k.bias": kvd,
            "attn_v.bias": kvd, "ffn_up.bias": hp.n_ff, "attn_q_norm.weight": hp.head_dim,
            "attn_k_norm.weight": hp.head_dim,
            **dict.fromkeys(("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"),
                            hp.n_rot // 2)}


# the types a weight may have: those the engine multiplies (native/dot.c's table; q8_1 and q8_K are only the types
# of the activations, which llama.cpp never stores either)
WEIGHT_TYPES = frozenset(t for t, (name, _, _) in native.TRAITS.items() if name not in ("q8_1", "q8_K"))


def check_tensors(weights: dict, hp: HParams, recipe) -> None:
    """The tensors the engine needs for this recipe and these hyper-parameters, with their shapes, as
    native/engine.c's tk_engine_new checks them again: layer numbers below block_count, token embeddings and/or
    output [n_vocab x n_embd], the output norm, rope factors that go together, learned positions without rope, and in
    each layer its norms, q/k/v (fused or not), the output projection and the feed-forward (dense, Phi-3's fused
    gate/up, or experts). Raises a message without the file's name."""
    qd, kvd, d = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim, hp.n_embd
    for name in weights:
        head, _, rest = name.partition(".")
        number = rest.partition(".")[0]
        if head == "blk" and number.isdigit() and int(number) >= hp.n_layer:
            raise UserError(f"tensor {name}: layer beyond block_count")

    def matrix(name: str, rows: int, cols: int, required: bool = True) -> bool:
        w = weights.get(name)
        if w is None:
            if required:
                raise UserError(f"missing tensor {name}")
            return False
        if (w.rows, w.cols) != (rows, cols):
            raise UserError(f"tensor {name} has shape {w.rows}x{w.cols}, expected {rows}x{cols}")
        return True

    def need(name: str) -> None:
        if name not in weights:
            raise UserError(f"missing tensor {name}")
    if not (matrix("token_embd.weight", hp.n_vocab, d, False) | matrix("output.weight", hp.n_vocab, d, False)):
        raise UserError("missing tensor token_embd.weight")  # either stands for the other (tied)
    need("output_norm.weight")
    if recipe.norm == "layer":
        need("output_norm.bias")
    if ("rope_factors_long.weight" in weights) != ("rope_factors_short.weight" in weights) or (
            "rope_factors_long.weight" in weights and "rope_freqs.weight" in weights):
        raise UserError("rope factors: rope_factors_long and rope_factors_short go together, without rope_freqs")
    if recipe.rope is None:
        pos = weights.get("position_embd.weight")
        matrix("position_embd.weight", pos.rows if pos is not None else 1, d)
    for layer in range(hp.n_layer):
        def has(suffix: str) -> bool:
            return f"blk.{layer}.{suffix}" in weights

        def mat(suffix: str, rows: int, cols: int) -> bool:
            return matrix(f"blk.{layer}.{suffix}", rows, cols)
        if has("attn_q_norm.weight") != has("attn_k_norm.weight"):
            raise UserError(f"layer {layer} has only one of attn_q_norm / attn_k_norm")
        for suffix in ("attn_norm.weight", "ffn_norm.weight") + (
                ("attn_norm.bias", "ffn_norm.bias") if recipe.norm == "layer" else ()):
            need(f"blk.{layer}.{suffix}")
        if has("attn_qkv.weight"):
            mat("attn_qkv.weight", qd + 2 * kvd, d)
        else:
            mat("attn_q.weight", qd, d), mat("attn_k.weight", kvd, d), mat("attn_v.weight", kvd, d)
        mat("attn_output.weight", d, qd)
        if has("ffn_gate_inp.weight"):
            ne, fe = hp.n_expert, hp.n_ff_exp
            if not ne or recipe.ffn != "swiglu" or any(has(s) for s in ("post_ffw_norm.weight", "ffn_gate.weight",
                                                                        "ffn_up.weight", "ffn_down.weight")):
                raise UserError(f"layer {layer}: experts without expert counts, with a feed-forward other than "
                                "SwiGLU, or beside a dense feed-forward or its post-norm")
            mat("ffn_gate_inp.weight", ne, d), mat("ffn_gate_exps.weight", ne * fe, d)
            mat("ffn_up_exps.weight", ne * fe, d), mat("ffn_down_exps.weight", ne * d, fe)
            continue
        up = weights.get(f"blk.{layer}.ffn_up.weight")
        fused = (recipe.ffn != "gelu" and not has("ffn_gate.weight") and up is not None and up.rows == 2 * hp.n_ff
                 and not has("ffn_up.bias"))   # Phi-3: gate and up in one matrix, the gate its first n_ff rows
        if recipe.ffn != "gelu" and not fused:
            mat("ffn_gate.weight", hp.n_ff, d)
        mat("ffn_up.weight", 2 * hp.n_ff if fused else hp.n_ff, d)
        mat("ffn_down.weight", d, hp.n_ff)


def _layer_suffix(name: str) -> str:
    """`blk.3.attn_norm.weight` → `attn_norm.weight`; other names as they are."""
    head, _, rest = name.partition(".")
    if head == "blk" and rest.partition(".")[0].isdigit():
        return rest.partition(".")[2]
    return name


class Model:
    def __init__(self, path: Path | str, populate: bool = True, use_mmap: bool = True):
        """populate: read the weights into memory now (as for inference); False reads only the header. use_mmap
        False: the weights read into memory of their own, in huge pages (llama.cpp's --no-mmap)."""
        self.path = Path(path)
        self.gguf = open_gguf(self.path, populate=populate, copy=not use_mmap)  # a split model: all its files
        self.weights: dict[str, Weight] = {}
        try:
            self._load()
        except BaseException:
            self.close()
            raise

    def _load(self) -> None:
        arch = self.gguf.value(Keys.General.ARCHITECTURE)
        if not isinstance(arch, str):
            raise UserError(f"{self.path.name}: {Keys.General.ARCHITECTURE} must be a string, got {arch!r}")
        self.recipe = archs.recipe(arch)
        tokens = self.gguf.value(Keys.Tokenizer.LIST)
        if tokens is None:
            raise UserError(f"{self.path.name} has no tokenizer (tokenizer.ggml.tokens)")
        if not isinstance(tokens, list) or not tokens or len(tokens) >= 2**31:
            raise UserError(f"{self.path.name}: tokenizer.ggml.tokens must be a non-empty array of strings "
                            "(fewer than 2^31)")
        self.hp = _hparams(self.gguf, arch, self.recipe, len(tokens))
        lengths = vector_lengths(self.hp)
        for e in self.gguf.tensors:
            if int(e.info.ggml_type) not in WEIGHT_TYPES:
                raise UserError(f"tensor {e.info.name} has type {e.info.ggml_type.name}, which the runtime does "
                                "not support")
            n = lengths.get(_layer_suffix(e.info.name))
            if n is not None and e.info.shape != (n,):
                raise UserError(f"{self.path.name}: tensor {e.info.name} has shape {list(e.info.shape)}, expected "
                                f"[{n}] from the hyper-parameters")
            self.weights[e.info.name] = Weight(self.gguf, e)
        try:
            check_tensors(self.weights, self.hp, self.recipe)
        except UserError as e:
            raise UserError(f"{self.path.name}: {e}") from None

    def close(self) -> None:
        self.weights.clear()
        self.gguf.close()
