"""codeshell: GPT-2-style blocks (LayerNorm with bias, fused qkv with bias, GELU) with grouped-query attention and
NEOX rope over the whole head."""
from runtime.arch.base import Transformer, layer_norm, rope_neox


class CodeShell(Transformer):
    norm = staticmethod(layer_norm)
    rope = staticmethod(rope_neox)
    ffn_kind = "gelu"
