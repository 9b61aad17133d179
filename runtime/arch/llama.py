"""llama (Llama, Mistral): RMSNorm, separate q/k/v, rope on adjacent pairs (the converter permuted q/k), SwiGLU.
qwen2: the same with q/k/v biases and NEOX rope."""
from runtime.arch.base import Transformer, rms_norm, rope_neox, rope_pairs


class Llama(Transformer):
    norm = staticmethod(rms_norm)
    rope = staticmethod(rope_pairs)
    ffn_kind = "swiglu"


class Qwen2(Llama):
    rope = staticmethod(rope_neox)
