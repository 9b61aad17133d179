"""Inference on GGUF files with the native core: tokenizer, forward pass, sampling, generation, chat, API."""
