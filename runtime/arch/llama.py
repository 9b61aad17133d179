"""llama (Llama, Mistral): RMSNorm, separate q/k/v, rope on adjacent pairs (the converter permuted q/k), SwiGLU.
qwen2: the same with q/k/v biases and NEOX rope; qwen (Qwen1): NEOX rope, fused q/k/v with bias; qwen3: NEOX rope and
RMS norms of q and k per head (from the tensors the file has)."""
from runtime.arch.base import Transformer


class Llama(Transformer):
    norm, rope, ffn = "rms", "norm", "swiglu"


class Qwen2(Llama):
    rope = "neox"


class Qwen(Llama):
    rope = "neox"
