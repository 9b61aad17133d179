"""gpt2: LayerNorm with bias, fused qkv with bias, learned absolute positions (no rope), GELU feed-forward."""
from runtime.arch.base import Transformer


class GPT2(Transformer):
    norm, rope, ffn = "layer", None, "gelu"
