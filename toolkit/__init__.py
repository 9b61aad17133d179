"""toolkit: Hugging Face checkpoints → GGUF → quantized → run and served, on one native core."""
__version__ = "0.1.0"
