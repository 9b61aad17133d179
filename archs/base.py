"""What every architecture module provides, read by the converter and the runtime alike: the Hugging Face classes it
converts and the GGUF architecture it writes; its GGUF hyper-parameters and the tensors it expects, with shapes derived
from config.json (so a checkpoint that contradicts its config is caught before anything is written); and its block
recipe, the parts the native engine composes the forward pass from."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from gguf import MODEL_ARCH_NAMES, MODEL_TENSORS, TENSOR_NAMES
from gguf import Keys as K
from gguf import MODEL_TENSOR as T

from common.errors import UserError

REGISTRY: dict[str, type["Architecture"]] = {}       # Hugging Face class name → description
BY_GGUF: dict[str, type["Architecture"]] = {}        # general.architecture → description


def tn(tensor: T, bid: int | None = None, suffix: str = "weight") -> str:
    """A GGUF tensor name by gguf-py's table: tn(T.ATTN_Q, 3) is 'blk.3.attn_q.weight'."""
    return f"{TENSOR_NAMES[tensor].format(bid=bid)}.{suffix}"


def gguf_tensors(gguf_arch: str) -> frozenset[str]:
    """The tensor name templates gguf-py lists for an architecture ('blk.{bid}.attn_q', 'output', ...)."""
    arch = next(a for a, name in MODEL_ARCH_NAMES.items() if name == gguf_arch)
    return frozenset(TENSOR_NAMES[t] for t in MODEL_TENSORS[arch])


def register(cls: type["Architecture"]) -> type["Architecture"]:
    if cls.gguf_arch not in MODEL_ARCH_NAMES.values():
        raise RuntimeError(f"{cls.__name__}: {cls.gguf_arch!r} is not an architecture gguf-py knows")
    for name in cls.hf_classes:
        REGISTRY[name] = cls
    if cls.gguf_arch in BY_GGUF and BY_GGUF[cls.gguf_arch] is not cls:
        raise RuntimeError(f"two descriptions of GGUF architecture {cls.gguf_arch}")
    BY_GGUF[cls.gguf_arch] = cls
    return cls


@dataclass(frozen=True)
class Recipe:
    """The block as data: what the engine composes (native/engine.c), named as native.engine_new takes them:
    norm, rope and ffn (GGUF files also carry post-norms, q/k norms and biases as tensors; sliding windows as keys).
    Fused or separate q/k/v, biases, q/k norms, tied output and rope frequency factors follow from the tensors a file
    has; everything else that differs between architectures is here."""
    norm: str                     # "rms" or "layer" (LayerNorm with bias)
    rope: str | None              # "norm" (adjacent pairs), "neox" (halves) or None (learned absolute positions)
    ffn: str                      # "swiglu" (gate and up) or "gelu" (up only)
    ffn_halved: bool = False      # feed_forward_length counts both halves of the gate/up width (Qwen1)
    chat_format: str = "chatml"   # the built-in chat format when a file carries no template
    embd_scaled: bool = False     # token embeddings multiplied by sqrt(n_embd) (Gemma)
    swa_period: int = 0           # sliding-window layers when the file names no pattern: all but every n-th
    swa_rope_shared: bool = False  # sliding layers rotate as the others unless the file says (else base 10000, scale 1)
    # soft-capping c · tanh(x / c) of attention scores / logits: the default when the file has no key (0: none);
    # None: the architecture has none (a file that asks for it is refused)
    attn_softcap: float | None = None
    final_softcap: float | None = None
    query_scale_by_width_at: int = 0  # with this many layers q·k is scaled by sqrt(n_head / n_embd), not
    #                                   1/sqrt(head_dim) (Gemma's 27B models, as llama.cpp decides it)

    def query_scale_dim(self, n_layer: int, n_embd: int, n_head: int, head_dim: int) -> int:
        """The number whose inverse square root scales q·k: head_dim, or n_embd / n_head for the models named by
        query_scale_by_width_at."""
        return n_embd // n_head if n_layer == self.query_scale_by_width_at else head_dim


@dataclass(frozen=True)
class TensorSpec:
    """One GGUF tensor and where it comes from.

    `shape` is the expected source shape (PyTorch order). The written tensor is the source, transposed if `transpose`,
    then with its rows (elements, for 1-D) reordered so that output row i is source row `rows[i]`.
    """
    gguf: str
    hf: str
    shape: tuple[int, ...]
    rows: np.ndarray | None = None
    transpose: bool = False
    keep_f32: bool = False  # stays F32 whatever the output type (1-D tensors always do)
    values: np.ndarray | None = None  # computed from the config rather than read (then `hf` is only a label)
    shift: float = 0.0  # added to every value (written F32): Gemma's norms scale by 1 + w, llama.cpp stores 1 + w
    # several checkpoint tensors (one per expert) stacked along a new first axis; `shape` is then one part's shape,
    # and `hf` a label for messages
    stack: tuple[str, ...] = ()

    @property
    def out_shape(self) -> tuple[int, ...]:
        if self.stack:
            return (len(self.stack), *self.shape)
        return tuple(reversed(self.shape)) if self.transpose else self.shape


# rope types the converter understands → the keys of their entry besides rope_type/rope_theta
ROPE_KEYS: dict[str, frozenset[str]] = {
    "default": frozenset(),
    "linear": frozenset({"factor"}),
    "llama3": frozenset({"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}),
    "longrope": frozenset({"long_factor", "short_factor", "original_max_position_embeddings", "factor",
                           "attention_factor"}),
}
MAX_LAYERS = 1 << 16  # the engine's TK_MAX_LAYERS: the most blocks a model may declare (config.json or GGUF)
ROPE_ALIASES = {"su": "longrope"}  # Phi-3's first configs, as transformers renames it
ROPE_LISTS = frozenset({"long_factor", "short_factor"})  # one number per rotated pair


def is_positive_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf


def llama3_rope_factors(rope: dict[str, object], head_dim: int) -> np.ndarray:
    """Llama 3.1's frequency factors (`rope_freqs.weight`, one per rotated pair): wavelengths shorter than
    original_max_position_embeddings / high_freq_factor keep their frequency, longer than .../low_freq_factor are
    divided by `factor`, those between are blended smoothly (as transformers' _compute_llama3_parameters)."""
    factor = rope["factor"]
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_ctx = rope.get("original_max_position_embeddings", 8192.0)
    if high <= low:
        raise UserError("config.json: llama3 rope needs high_freq_factor > low_freq_factor")
    f32 = np.float32
    freqs = f32(1.0) / (f32(rope["theta"]) ** (np.arange(0, head_dim, 2, dtype=f32) / f32(head_dim)))
    wavelen = f32(2 * math.pi) / freqs  # float32 throughout, as llama.cpp's converter computes them
    smooth = (f32(old_ctx) / wavelen - f32(low)) / f32(high - low)
    blended = f32(1.0) / ((f32(1.0) - smooth) / f32(factor) + smooth)
    out = np.where(wavelen < f32(old_ctx / high), f32(1.0),
                   np.where(wavelen > f32(old_ctx / low), f32(factor), blended))
    return out.astype(np.float32)


def rope_permutation(n_head: int, rows: int) -> "RopePermutation":
    """Row order that turns Hugging Face's rotate-half q/k layout into llama.cpp's adjacent-pairs layout.

    Within each head the rows are (first half, second half); llama.cpp wants them interleaved: 0, h/2, 1, h/2+1, ...
    """
    return RopePermutation(n_head, rows)


class RopePermutation:
    """rope_permutation's row order, computed a slice at a time when the tensor is converted: its length comes from
    config.json, so nothing is allocated for it before the checkpoint's shapes have been checked against the config."""

    def __init__(self, n_head: int, rows: int):
        if rows % n_head or (rows // n_head) % 2:
            raise UserError(f"config.json: {rows} q/k rows do not split into {n_head} heads of an even size")
        self.half, self.rows = rows // n_head // 2, rows

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, index: slice) -> np.ndarray:
        """Output rows `index` → their source rows: output h·hd + 2p + k is source h·hd + k·hd/2 + p."""
        r = np.arange(*index.indices(self.rows))
        head, within = np.divmod(r, 2 * self.half)
        return head * 2 * self.half + (within % 2) * self.half + within // 2

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


class Architecture:
    hf_classes: tuple[str, ...] = ()
    gguf_arch: str = ""
    recipe: Recipe
    spm_space_prefix: bool | None = None  # written for SentencePiece vocabularies when set (Gemma: no space prefix)
    spm_ok: bool = True  # SentencePiece vocabularies are accepted
    partial_rotary: bool = False  # rope may turn only part of each head (partial_rotary_factor < 1)
    # checkpoint entries that are not weights (buffers) and are never converted
    skip_suffixes: tuple[str, ...] = (".rotary_emb.inv_freq",)

    def __init__(self, config: dict):
        self.config = config

    # -- config helpers -------------------------------------------------------------------------------------------
    def get(self, *keys: str, default=None, required: bool = True):
        for k in keys:
            if self.config.get(k) is not None:
                return self.config[k]
        if default is not None or not required:
            return default
        raise UserError(f"config.json has no {' / '.join(keys)}")

    def get_int(self, *keys: str, default=None) -> int:
        v = self.get(*keys, default=default)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise UserError(f"config.json: {keys[0]} must be a positive integer, got {v!r}")
        return v

    def get_count(self, *keys: str) -> int:
        """A non-negative integer from config.json, 0 when absent (an optional count or size: experts, a window)."""
        v = self.get(*keys, default=0)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise UserError(f"config.json: {keys[0]} must be a non-negative integer, got {v!r}")
        return v

    def layer_count(self, *keys: str) -> int:
        """The number of blocks, at most MAX_LAYERS (a larger one is a damaged config, not a model to plan for)."""
        v = self.get_int(*keys)
        if v > MAX_LAYERS:
            raise UserError(f"config.json: {keys[0]} {v} is more than the {MAX_LAYERS} layers a model may have")
        return v

    def get_float(self, *keys: str, default=None) -> float:
        """A positive, finite number (an epsilon, a factor) from config.json."""
        v = self.get(*keys, default=default)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
            raise UserError(f"config.json: {keys[0]} must be a positive number, got {v!r}")
        return float(v)

    def standard_sizes(self) -> None:
        """The block sizes under transformers' standard config names: n_embd, n_layer, n_head, n_head_kv (grouped-query
        attention), n_ff and head_dim (hidden_size / heads unless set)."""
        self.n_embd = self.get_int("hidden_size")
        self.n_layer = self.layer_count("num_hidden_layers")
        self.n_head = self.get_int("num_attention_heads")
        self.n_head_kv = self.get_int("num_key_value_heads", default=self.n_head)
        self.n_ff = self.get_int("intermediate_size")
        self.head_dim = self.get_int("head_dim", default=self.divides(self.n_embd, self.n_head, "hidden_size"))
        self.divides(self.n_head, self.n_head_kv, "num_attention_heads")

    def gpt2_sizes(self) -> None:
        """The block sizes under GPT-2's config names (GPT-2 and its descendants, CodeShell): n_embd, n_layer, n_head,
        n_ff (n_inner, 4 × n_embd unless set); n_embd must be a multiple of n_head."""
        self.n_embd = self.get_int("n_embd")
        self.n_layer = self.layer_count("n_layer")
        self.n_head = self.get_int("n_head")
        self.n_ff = self.get_int("n_inner", default=4 * self.n_embd)
        self.head_dim = self.divides(self.n_embd, self.n_head, "n_embd")

    def divides(self, a: int, b: int, what: str) -> int:
        if a % b:
            raise UserError(f"config.json: {what} ({a}) is not a multiple of {b}")
        return a // b

    def rope(self, default_theta: float = 10000.0, layer_type: str | None = None) -> dict[str, object]:
        """The rope settings in one form, read from either form transformers writes: transformers 4's top-level
        `rope_theta` with a `rope_scaling` dict (or null), transformers 5's `rope_parameters` (`rope_theta`,
        `rope_type` and the type's factors). Both present must agree. A rope type, or a key of its entry, that is not
        understood is an error: a default would convert silently wrong. `layer_type` ("full_attention",
        "sliding_attention") picks one entry of per-layer-type settings: transformers 5 nests them in
        rope_parameters; transformers 4 gave the sliding layers `rope_local_base_freq` and no scaling."""
        legacy = self.config.get("rope_scaling") or {}
        params = self.config.get("rope_parameters")
        if not isinstance(legacy, dict) or (params is not None and not isinstance(params, dict)):
            raise UserError("config.json: rope_scaling / rope_parameters must be objects")
        if params and any(isinstance(v, dict) for v in params.values()):
            if layer_type is None or not isinstance(params.get(layer_type), dict):
                raise UserError(f"config.json: per-layer-type rope_parameters ({', '.join(params)}) are not "
                                f"supported for {self.gguf_arch}")
            params = params[layer_type]
        merged: dict[str, object] = {}
        theta_key = "rope_local_base_freq" if layer_type == "sliding_attention" else "rope_theta"
        if layer_type == "sliding_attention":
            legacy = {}
        if self.config.get(theta_key) is not None:
            merged["rope_theta"] = self.config[theta_key]
        for source in (legacy, params or {}):
            for key, value in source.items():
                key = "rope_type" if key == "type" else key
                if key in merged and merged[key] != value:
                    raise UserError(f"config.json: {key} is {merged[key]!r} in one place and {value!r} in another")
                merged[key] = value
        kind = merged.pop("rope_type", "default")
        if not isinstance(kind, str):
            raise UserError(f"config.json: rope_type must be a string, got {kind!r}")
        kind = ROPE_ALIASES.get(kind, kind)
        allowed = ROPE_KEYS.get(kind)
        if allowed is None:
            raise UserError(f"config.json: rope type {kind!r} is not supported for {self.gguf_arch} "
                            f"(supported: {', '.join(ROPE_KEYS)})")
        unknown = sorted(set(merged) - allowed - {"rope_theta", "partial_rotary_factor"})
        if unknown:
            raise UserError(f"config.json: rope parameter(s) {', '.join(unknown)} of rope type {kind!r} "
                            f"are not understood")
        theta = merged.get("rope_theta", default_theta)
        if not isinstance(theta, (int, float)) or isinstance(theta, bool) or theta <= 0:
            raise UserError(f"config.json: rope_theta must be a positive number, got {theta!r}")
        out = {"type": kind, "theta": float(theta)}
        for key in allowed:
            if key in merged:
                v = merged[key]
                if key in ROPE_LISTS:
                    if not isinstance(v, list) or not v or not all(is_positive_number(x) for x in v):
                        raise UserError(f"config.json: rope parameter {key} must be a list of positive numbers")
                    out[key] = tuple(float(x) for x in v)
                elif not is_positive_number(v):
                    raise UserError(f"config.json: rope parameter {key} must be a positive number, got {v!r}")
                else:
                    out[key] = float(v)
        need = {"linear": ("factor",), "llama3": ("factor",), "longrope": ("long_factor", "short_factor")}
        for key in need.get(kind, ()):
            if key not in out:
                raise UserError(f"config.json: rope type {kind!r} needs a {key}")
        partial = merged.get("partial_rotary_factor", self.config.get("partial_rotary_factor", 1.0))
        if not is_positive_number(partial) or partial > 1:
            raise UserError(f"config.json: partial_rotary_factor must be in (0, 1], got {partial!r}")
        if partial != 1 and not self.partial_rotary:
            raise UserError(f"config.json: partial rotary embeddings are not supported for {self.gguf_arch}")
        out["partial"] = float(partial)
        return out

    def rope_hparams(self, rope: dict[str, object]) -> dict[str, object]:
        """GGUF keys (gguf-py templates) for rope settings from rope(): llama3 adds a tensor, not keys."""
        hp: dict[str, object] = {K.Rope.FREQ_BASE: rope["theta"]}
        if rope["type"] == "linear":
            hp[K.Rope.SCALING_TYPE] = "linear"
            hp[K.Rope.SCALING_FACTOR] = rope["factor"]
        return hp

    # -- what subclasses provide ----------------------------------------------------------------------------------
    def hparams(self) -> dict[str, object]:
        """gguf-py key templates ('{arch}.context_length', ...) -> value (int → uint32, float → float32,
        str → string)."""
        raise NotImplementedError

    def tensors(self, available: set[str]) -> Iterator[TensorSpec]:
        """The tensors to write, in file order. `available` are the names present in the checkpoint."""
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        return self.get_int("vocab_size")

    def skipped(self, name: str) -> bool:
        return name.endswith(self.skip_suffixes)
