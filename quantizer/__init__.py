"""GGUF → quantized GGUF with the native core, choosing per-tensor types as llama-quantize does."""
