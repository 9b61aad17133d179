"""CodeShell → GGUF `codeshell`: GPT-2-like blocks (LayerNorm with bias, fused qkv, GELU MLP) with grouped-query
attention and NEOX (rotate-half) rope, so no permutation; weights are nn.Linear, so no transpose."""
from __future__ import annotations

import logging
from typing import Iterator

from converter.arch.base import Architecture, TensorSpec, register
from toolkit.errors import UserError

log = logging.getLogger("toolkit")


@register
class CodeShell(Architecture):
    hf_classes = ("CodeShellForCausalLM",)
    gguf_arch = "codeshell"

    def __init__(self, config: dict):
        super().__init__(config)
        self.n_embd = self.get_int("n_embd")
        self.n_layer = self.get_int("n_layer")
        self.n_head = self.get_int("n_head")
        self.n_ff = self.get_int("n_inner", default=4 * self.n_embd)
        gqa = bool(self.get("group_query_attention", default=False, required=False))
        self.n_head_kv = self.get_int("num_query_groups") if gqa else self.n_head
        self.head_dim = self.divides(self.n_embd, self.n_head, "n_embd")
        self.divides(self.n_head, self.n_head_kv, "n_head")
        self.learned_pos = self.get("position_embedding_type", default="rope", required=False) == "learned_absolute"

    def hparams(self) -> dict[str, object]:
        hp = {
            "context_length": self.get_int("n_positions"),
            "embedding_length": self.n_embd,
            "feed_forward_length": self.n_ff,
            "block_count": self.n_layer,
            "attention.head_count": self.n_head,
            "attention.head_count_kv": self.n_head_kv,
            "attention.layer_norm_epsilon": float(self.get("layer_norm_epsilon")),
            "rope.freq_base": 10000.0,
            "rope.scaling.type": "linear",
            "rope.scaling.factor": 1.0,
        }
        rs = self.config.get("rope_scaling") or {}
        kind = rs.get("type", rs.get("rope_type"))
        if kind == "linear":
            hp["rope.scaling.factor"] = float(rs["factor"])
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
            yield TensorSpec("token_embd.weight", "transformer.wte.weight", (V, E))
        if self.learned_pos:
            yield TensorSpec("position_embd.weight", "transformer.wpe.weight",
                             (self.get_int("n_positions"), E), keep_f32=True)
        for i in range(self.n_layer):
            p, b = f"transformer.h.{i}.", f"blk.{i}."
            yield TensorSpec(b + "attn_norm.weight", p + "ln_1.weight", (E,))
            yield TensorSpec(b + "attn_norm.bias", p + "ln_1.bias", (E,))
            yield TensorSpec(b + "attn_qkv.weight", p + "attn.c_attn.weight", (qkv, E))
            yield TensorSpec(b + "attn_qkv.bias", p + "attn.c_attn.bias", (qkv,))
            yield TensorSpec(b + "attn_output.weight", p + "attn.c_proj.weight", (E, E))
            yield TensorSpec(b + "attn_output.bias", p + "attn.c_proj.bias", (E,))
            yield TensorSpec(b + "ffn_norm.weight", p + "ln_2.weight", (E,))
            yield TensorSpec(b + "ffn_norm.bias", p + "ln_2.bias", (E,))
            yield TensorSpec(b + "ffn_up.weight", p + "mlp.c_fc.weight", (F, E))
            yield TensorSpec(b + "ffn_up.bias", p + "mlp.c_fc.bias", (F,))
            yield TensorSpec(b + "ffn_down.weight", p + "mlp.c_proj.weight", (E, F))
            yield TensorSpec(b + "ffn_down.bias", p + "mlp.c_proj.bias", (E,))
        yield TensorSpec("output_norm.weight", "transformer.ln_f.weight", (E,))
        yield TensorSpec("output_norm.bias", "transformer.ln_f.bias", (E,))
        yield TensorSpec("output.weight", "lm_head.weight" if has_head else "transformer.wte.weight", (V, E))
