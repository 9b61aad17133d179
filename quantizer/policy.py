"""Which type each tensor gets: llama-quantize's rules as llama.cpp (the version pinned by llama-cpp-python 0.3.36)
applies them — which tensors are quantized at all, the k-quant mixtures, the overrides, and the shape fallbacks.

The rules are stateful in llama.cpp (counters over attention-v and ffn_down tensors in file order), so the policy
is applied to the whole list of tensors at once, in llama.cpp's order (non-block tensors first, then by layer, each
group by name)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

from common.errors import UserError
from quantizer.types import FileType, is_quantized, type_name


@dataclass
class Options:
    leave_output_tensor: bool = False
    pure: bool = False
    output_tensor_type: T | None = None
    token_embedding_type: T | None = None
    # --tensor-type PATTERN=TYPE, in order: the first pattern found (re.search) in a tensor's name gives its type
    tensor_types: list[tuple[str, T]] = field(default_factory=list)


@dataclass(frozen=True)
class ModelFacts:
    arch: str
    n_layer: int
    n_gqa: int        # query heads per kv head
    n_expert: int
    is_70b: bool


@dataclass
class Choice:
    name: str
    shape: tuple[int, ...]
    src_type: T
    dst_type: T
    fallback: str | None = None  # the warning when the shape forced a fallback type
    source: str | None = None    # the input tensor's name, when --prune-layers renumbered its block

    @property
    def source_name(self) -> str:
        return self.source or self.name


# llama.cpp's tensor_name_match_token_embd
TOKEN_EMBD_NAMES = ("token_embd.weight", "per_layer_token_embd.weight")

_NOT_QUANTIZED = ("_norm.weight", "ffn_gate_inp.weight", "ssm_conv1d", "attn_rel_b.weight", ".position_embd",
                  ".patch_embd", "time_mix_first.weight")


def prune_renames(names: list[str], prune: list[int]) -> tuple[dict[str, str | None], int]:
    """--prune-layers: each block tensor's new name (None: pruned) and the new block count, as llama.cpp renumbers
    them (blocks below the first pruned one keep their number, the later kept ones follow on)."""
    prune = sorted(set(prune))
    mapped: dict[int, int | None] = {}
    renames: dict[str, str | None] = {}
    next_id = 0
    for name in llama_order(names):
        m = re.search(r"blk\.(\d+)\.", name)
        if not m:
            continue
        blk = int(m.group(1))
        if blk not in mapped:
            if blk in prune:
                mapped[blk] = None
            elif blk < prune[0]:
                mapped[blk], next_id = blk, blk + 1
            else:
                mapped[blk], next_id = next_id, next_id + 1
        new = mapped[blk]
        renames[name] = None if new is None else name[:m.start(1)] + str(new) + name[m.end(1):]
    return renames, next_id


def llama_order(names: list[str]) -> list[str]:
    """llama.cpp's tensor order: non-block tensors first, then block by block; by name within each group."""
    def key(n: str):
        m = re.match(r"blk\.(\d+)\.", n)
        return (int(m.group(1)) if m else -1, n)
    return sorted(names, key=key)


def allows_quantization(name: str, shape: tuple[int, ...], arch: str, opts: Options) -> bool:
    if len(shape) < 2 or not name.endswith("weight"):
        return False
    if any(s in name for s in _NOT_QUANTIZED):
        return False
    if name in ("position_embd.weight", "token_types.weight"):
        return False
    return not (opts.leave_output_tensor and name == "output.weight")


def category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name in TOKEN_EMBD_NAMES:
        return "token_embd"
    for cat in ("attn_qkv.weight", "attn_kv_b.weight", "attn_v.weight", "attn_k.weight", "attn_q.weight",
                "attn_output.weight", "ffn_up", "ffn_gate", "ffn_down"):
        if cat in name:
            return cat.removesuffix(".weight")
    return "other"


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


# llama.cpp's file types of about 2 bits and less, whose mixture has rules of its own (_Mixture._very_low_bit)
VERY_LOW_BIT = ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M")


class _Mixture:
    """llama_tensor_get_type_impl for the k-quant, legacy, IQ4 and ternary file types; has_imatrix: quantizing with an
    importance matrix."""

    def __init__(self, ft: FileType, facts: ModelFacts, tied: bool, n_attn_v: int, opts: Options,
                 has_imatrix: bool = False):
        self.ft, self.facts, self.tied, self.n_attn_v, self.opts = ft.name, facts, tied, n_attn_v, opts
        self.has_imatrix = has_imatrix
        self.i_attn_v = 0
        self.i_ffn_down = 0
        self.i_ffn_gate = 0
        self.i_ffn_up = 0

    def choose(self, name: str, ncols: int, t: T) -> T:
        cat, f, facts = category(name), self.ft, self.facts
        falcon = facts.arch == "falcon"
        if cat == "output" or (self.tied and cat == "token_embd"):
            if self.opts.output_tensor_type is not None:
                return self.opts.output_tensor_type
            if falcon or ncols % GGML_QUANT_SIZES[t][0]:
                return T.Q8_0
            if f == "IQ3_XXS":
                return T.Q5_K
            if f in VERY_LOW_BIT:
                return T.Q5_K
            return t if t == T.Q8_0 else T.Q6_K
        if cat == "token_embd":
            if self.opts.token_embedding_type is not None:
                return self.opts.token_embedding_type
            if f == "IQ3_XXS":
                return T.IQ3_S
            if f in VERY_LOW_BIT:
                return T.IQ3_S if f in ("IQ2_S", "IQ2_M") else T.Q2_K
            return T.Q4_K if f in ("TQ1_0", "TQ2_0") else t
        if f in VERY_LOW_BIT:
            return self._very_low_bit(cat, t)
        if cat in ("attn_v", "attn_qkv", "attn_kv_b"):
            if f == "Q2_K":
                t = T.Q4_K if facts.n_gqa >= 4 else T.Q3_K
            elif f == "Q2_K_S" and facts.n_gqa >= 4:
                t = T.Q4_K
            elif f == "IQ3_XXS":
                t = T.Q4_K if facts.n_gqa >= 4 else T.IQ3_XXS if self.has_imatrix else T.IQ3_S
            elif f in ("IQ3_XS", "IQ3_S") and facts.n_gqa >= 4:
                t = T.Q4_K
            elif f == "IQ3_M":
                t = T.Q4_K
            elif f == "Q3_K_M":
                t = T.Q5_K if self.i_attn_v < 2 else T.Q4_K
            elif f == "Q3_K_L":
                t = T.Q5_K
            elif f in ("IQ4_NL", "IQ4_XS") and facts.n_gqa >= 4:
                t = T.Q5_K
            elif f in ("Q4_K_M", "Q5_K_M") and use_more_bits(self.i_attn_v, self.n_attn_v):
                t = T.Q6_K
            elif f == "Q4_K_S" and self.i_attn_v < 4:
                t = T.Q5_K
            if facts.is_70b and t in (T.Q3_K, T.Q4_K):
                t = T.Q5_K
            if facts.n_expert == 8:
                t = T.Q8_0
            self.i_attn_v += 1
        elif cat == "attn_k":
            if facts.n_expert == 8:
                t = T.Q8_0
            elif f == "IQ3_XS":
                t = T.IQ3_XXS
            elif f == "IQ3_XXS":
                t = T.IQ2_S
        elif cat == "attn_q":
            if f == "IQ3_XS":
                t = T.IQ3_XXS
            elif f == "IQ3_XXS":
                t = T.IQ2_S
        elif cat == "ffn_down":
            i, n = self.i_ffn_down, facts.n_layer
            if f == "Q2_K":
                t = T.Q3_K
            elif f == "Q2_K_S":
                if i < n // 8:
                    t = T.Q4_K
            elif f == "IQ3_XXS" and not self.has_imatrix:
                t = T.Q4_K if i < n // 8 else T.Q3_K
            elif f == "Q3_K_M":
                t = T.Q5_K if i < n // 16 else T.Q4_K if (not falcon or use_more_bits(i, n)) else T.Q3_K
            elif f == "IQ3_M" and (i < n // 8 or (facts.n_expert == 8 and use_more_bits(i, n))):
                t = T.Q4_K
            elif f == "Q3_K_L":
                t = T.Q4_K if falcon else T.Q5_K
            elif f == "Q4_K_M":
                if falcon:
                    t = T.Q6_K if i < n // 16 else T.Q5_K if use_more_bits(i, n) else T.Q4_K
                elif use_more_bits(i, n):
                    t = T.Q6_K
            elif f in ("IQ4_NL", "IQ4_XS") and i < n // 8 and not self.has_imatrix:
                t = T.Q5_K
            elif f == "Q5_K_M" and use_more_bits(i, n):
                t = T.Q6_K
            elif f == "Q4_K_S" and not falcon and i < n // 8:
                t = T.Q5_K
            elif f in ("Q4_0", "Q5_0") and self.has_imatrix and i < n // 8:
                # llama.cpp guards the first ffn_down layers only when an imatrix is given
                t = T.Q4_1 if f == "Q4_0" else T.Q5_1
            self.i_ffn_down += 1
        elif cat == "attn_output":
            if not falcon:
                if facts.n_expert == 8:
                    if f in ("Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_S", "Q4_K_M", "IQ4_NL", "IQ4_XS", "IQ3_XXS", "IQ3_XS",
                             "IQ3_S", "IQ3_M"):
                        t = T.Q5_K
                elif f == "Q2_K":
                    t = T.Q3_K
                elif f == "IQ3_XXS":
                    t = T.IQ3_S
                elif f == "IQ3_M":
                    t = T.Q4_K
                elif f == "Q3_K_M":
                    t = T.Q4_K
                elif f == "Q3_K_L":
                    t = T.Q5_K
            elif f == "Q3_K_L":
                t = T.Q4_K
        elif cat in ("ffn_gate", "ffn_up"):
            # IQ3_XS: the gate and up matrices of the middle three quarters of the layers go one type down
            i, n = self.i_ffn_gate if cat == "ffn_gate" else self.i_ffn_up, facts.n_layer
            if f == "IQ3_XS" and n // 8 <= i < 7 * n // 8:
                t = T.IQ3_XXS
            if cat == "ffn_gate":
                self.i_ffn_gate += 1
            else:
                self.i_ffn_up += 1
        return t

    def _very_low_bit(self, cat: str, t: T) -> T:
        """The rules of the very-low-bit file types, which replace all the others: attn_v Q4_K with GQA >= 4 or 4+
        experts (else Q2_K, IQ3_S for IQ2_S/IQ2_M), attn_k Q4_K with 8 experts, the first eighth of ffn_down Q2_K
        (IQ3_S), attn_output Q5_K with 8 experts, else IQ2_XXS for IQ1_S/IQ1_M and IQ3_S for IQ2_S/IQ2_M."""
        f, facts = self.ft, self.facts
        low = T.IQ3_S if f in ("IQ2_S", "IQ2_M") else T.Q2_K
        if cat in ("attn_v", "attn_qkv", "attn_kv_b"):
            t = T.Q4_K if facts.n_gqa >= 4 or facts.n_expert >= 4 else low
            self.i_attn_v += 1
        elif cat == "attn_k" and facts.n_expert == 8:
            t = T.Q4_K
        elif cat == "ffn_down":
            if self.i_ffn_down < facts.n_layer // 8:
                t = low
            self.i_ffn_down += 1
        elif cat == "attn_output":
            if facts.n_expert == 8:
                t = T.Q5_K
            elif f in ("IQ1_S", "IQ1_M"):
                t = T.IQ2_XXS
            elif f in ("IQ2_S", "IQ2_M"):
                t = T.IQ3_S
        return t


_FALLBACK = {T.IQ1_S: T.IQ4_NL, T.IQ1_M: T.IQ4_NL,
             T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0, T.IQ4_XS: T.IQ4_NL,
             T.TQ1_0: T.Q4_0, T.TQ2_0: T.Q4_0, T.IQ3_XXS: T.IQ4_NL, T.IQ3_S: T.IQ4_NL,
             T.IQ2_XXS: T.IQ4_NL, T.IQ2_XS: T.IQ4_NL, T.IQ2_S: T.IQ4_NL}


def shape_fallback(name: str, ncols: int, t: T) -> tuple[T, str | None]:
    block = GGML_QUANT_SIZES[t][0]
    if ncols % block == 0:
        return t, None
    new = _FALLBACK.get(t, t)
    if ncols % GGML_QUANT_SIZES[new][0]:
        new = T.F16
    return new, (f"{name}: ncols {ncols} not divisible by {block} (required for type {type_name(t)}) "
                 f"-> falling back to {type_name(new)}")


def requires_imatrix(name: str, dst_type: T, ft: FileType) -> bool:
    """llama.cpp's tensor_requires_imatrix: a type that is garbage without an importance matrix (of those we have,
    Q2_K in a Q2_K_S file), never for the output or token embeddings."""
    if name == "output.weight" or name in TOKEN_EMBD_NAMES:
        return False
    if dst_type == T.IQ3_XXS:
        return True
    if dst_type in (T.IQ1_S, T.IQ1_M):
        return True
    if dst_type in (T.IQ2_XXS, T.IQ2_XS, T.IQ2_S):
        return True
    return dst_type == T.Q2_K and ft.name == "Q2_K_S"


def _manual_types(patterns: list[tuple[str, T]]):
    """name -> the type of the first --tensor-type pattern found in it (None when none is)."""
    compiled = []
    for pattern, t in patterns:
        try:
            compiled.append((re.compile(pattern), t))
        except re.error as e:
            raise UserError(f"--tensor-type: {pattern!r} is not a regular expression ({e})") from None

    def manual(name: str) -> T | None:
        return next((t for rx, t in compiled if rx.search(name)), None)
    return manual


def plan(tensors: list[tuple[str, tuple[int, ...], T]], ft: FileType, facts: ModelFacts,
         opts: Options, has_imatrix: bool = False, keep_order: bool = False) -> list[Choice]:
    """Target types for (name, numpy-order shape, current type) tensors, returned in llama.cpp's order (or in the
    order given with keep_order, as llama-quantize --keep-split takes them: by file, then offset)."""
    by_name = {n: (s, t) for n, s, t in tensors}
    order = list(by_name) if keep_order else llama_order(list(by_name))
    tied = "output.weight" not in by_name
    n_attn_v = sum(category(n) in ("attn_v", "attn_qkv", "attn_kv_b") for n in order)
    mix = _Mixture(ft, facts, tied, n_attn_v, opts, has_imatrix)
    manual = _manual_types(opts.tensor_types)
    out = []
    for name in order:
        shape, cur = by_name[name]
        choice = Choice(name, shape, cur, cur)
        if allows_quantization(name, shape, facts.arch, opts):
            ncols = shape[-1]
            if (opts.token_embedding_type is not None and category(name) == "token_embd"
                    # a pattern naming per_layer_token_embd wins over --token-embedding-type (a large table apart)
                    and not (name == "per_layer_token_embd.weight" and manual(name) is not None)):
                new = opts.token_embedding_type
            elif opts.output_tensor_type is not None and category(name) == "output":
                new = opts.output_tensor_type
            else:
                new = ft.default
                if is_quantized(new):
                    # a manual type skips the mixture, whose counters then do not count this tensor (as llama.cpp)
                    forced = manual(name)
                    if forced is not None:
                        new = forced
                    elif not opts.pure:
                        new = mix.choose(name, ncols, new)
                    new, choice.fallback = shape_fallback(name, ncols, new)
            choice.dst_type = new
        out.append(choice)
    return out
