"""llama (Llama, Mistral): RMSNorm, separate q/k/v, rope on adjacent pairs (the converter permuted q/k), SwiGLU.
qwen2: the same with q/k/v biases and NEOX rope."""
from runtime.arch.base import Transformer


class Llama(Transformer):
    norm, rope, ffn = "rms", "norm", "swiglu"


class Qwen2(Llama):
    rope = "neox"
