"""CodeShell → GGUF `codeshell`: GPT-2-like blocks (LayerNorm with bias, fused qkv, GELU MLP) with grouped-query
attention and NEOX (rotate-half) rope, so no permutation; weights are nn.Linear, so no transpose."""
from __future__ import annotations

import logging
from typing import Iterator

from gguf import Keys as K

from archs.base import Architecture, Recipe, T, TensorSpec, is_positive_number, register, tn
from common.errors import UserError

log = logging.getLogger("toolkit")


@register
class CodeShell(Architecture):
    hf_classes = ("CodeShellForCausalLM",)
    gguf_arch = "codeshell"
    recipe = Recipe(norm="layer", rope="neox", ffn="gelu", chat_format="codeshell")

    def __init__(self, config: dict):
        super().__init__(config)
        self.gpt2_sizes()
        gqa = bool(self.get("group_query_attention", default=False, required=False))
        self.n_head_kv = self.get_int("num_query_groups") if gqa else self.n_head
        self.divides(self.n_head, self.n_head_kv, "n_head")
        self.learned_pos = self.get("position_embedding_type", default="rope", required=False) == "learned_absolute"

    def hparams(self) -> dict[str, object]:
        hp = {
            K.LLM.CONTEXT_LENGTH: self.get_int("n_positions"),
            K.LLM.EMBEDDING_LENGTH: self.n_embd,
            K.LLM.FEED_FORWARD_LENGTH: self.n_ff,
            K.LLM.BLOCK_COUNT: self.n_layer,
            K.Attention.HEAD_COUNT: self.n_head,
            K.Attention.HEAD_COUNT_KV: self.n_head_kv,
            K.Attention.LAYERNORM_EPS: self.get_float("layer_norm_epsilon"),
            K.Rope.FREQ_BASE: 10000.0,
            K.Rope.SCALING_TYPE: "linear",
            K.Rope.SCALING_FACTOR: 1.0,
        }
        rs = self.config.get("rope_scaling") or {}
        if not isinstance(rs, dict):
            raise UserError("config.json: rope_scaling must be an object")
        kind = rs.get("type", rs.get("rope_type"))
        if kind == "linear":
            if not is_positive_number(rs.get("factor")):
                raise UserError(f"config.json: rope_scaling factor must be a positive number, got {rs.get('factor')!r}")
            hp[K.Rope.SCALING_FACTOR] = float(rs["factor"])
        elif kind == "dynamic":
            # Dynamic NTK only changes positions beyond n_positions, which llama.cpp does not model.
            log.warning("rope_scaling 'dynamic' is not supported by llama.cpp; positions beyond the training "
                        "context will not be rescaled")
        elif kind is not None:
            raise UserError(f"rope_scaling type {kind!r} is not supported (supported: linear, dynamic)")
        return hp

    def tensors(self, available: set[str]) -> Iterator[TensorSpec]:
        E, F, V = self.n_embd, self.n_ff, self.vocab_size
        qkv = E + 2 * self.n_head_kv * self.head_dim
        has_wte, has_head = "transformer.wte.weight" in available, "lm_head.weight" in available
        # CodeShell-7B ships lm_head and not wte (which its index still lists): llama.cpp requires `output` and
        # reuses it for the token embeddings when token_embd is absent. The reverse case duplicates wte as output.
        if has_wte or not has_head:
            yield TensorSpec(tn(T.TOKEN_EMBD), "transformer.wte.weight", (V, E))
        if self.learned_pos:
            yield TensorSpec(tn(T.POS_EMBD), "transformer.wpe.weight",
                             (self.get_int("n_positions"), E), keep_f32=True)
        for i in range(self.n_layer):
            p = f"transformer.h.{i}."
            yield TensorSpec(tn(T.ATTN_NORM, i), p + "ln_1.weight", (E,))
            yield TensorSpec(tn(T.ATTN_NORM, i, "bias"), p + "ln_1.bias", (E,))
            yield TensorSpec(tn(T.ATTN_QKV, i), p + "attn.c_attn.weight", (qkv, E))
            yield TensorSpec(tn(T.ATTN_QKV, i, "bias"), p + "attn.c_attn.bias", (qkv,))
            yield TensorSpec(tn(T.ATTN_OUT, i), p + "attn.c_proj.weight", (E, E))
            yield TensorSpec(tn(T.ATTN_OUT, i, "bias"), p + "attn.c_proj.bias", (E,))
            yield TensorSpec(tn(T.FFN_NORM, i), p + "ln_2.weight", (E,))
            yield TensorSpec(tn(T.FFN_NORM, i, "bias"), p + "ln_2.bias", (E,))
            yield TensorSpec(tn(T.FFN_UP, i), p + "mlp.c_fc.weight", (F, E))
            yield TensorSpec(tn(T.FFN_UP, i, "bias"), p + "mlp.c_fc.bias", (F,))
            yield TensorSpec(tn(T.FFN_DOWN, i), p + "mlp.c_proj.weight", (E, F))
            yield TensorSpec(tn(T.FFN_DOWN, i, "bias"), p + "mlp.c_proj.bias", (E,))
        yield TensorSpec(tn(T.OUTPUT_NORM), "transformer.ln_f.weight", (E,))
        yield TensorSpec(tn(T.OUTPUT_NORM, None, "bias"), "transformer.ln_f.bias", (E,))
        yield TensorSpec(tn(T.OUTPUT), "lm_head.weight" if has_head else "transformer.wte.weight", (V, E))
