"""Hugging Face checkpoint → GGUF conversion (streaming, memory bounded by one tensor)."""
