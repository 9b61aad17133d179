"""codeshell: GPT-2-style blocks (LayerNorm with bias, fused qkv with bias, GELU) with grouped-query attention and
NEOX rope over the whole head."""
from runtime.arch.base import Transformer


class CodeShell(Transformer):
    norm, rope, ffn = "layer", "neox", "gelu"
