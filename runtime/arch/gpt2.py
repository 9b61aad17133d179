"""gpt2: LayerNorm with bias, fused qkv with bias, learned absolute positions (no rope), GELU feed-forward."""
from runtime.arch.base import Transformer, layer_norm


class GPT2(Transformer):
    norm = staticmethod(layer_norm)
    rope = None
    ffn_kind = "gelu"
