"""The base every layer stands on: the error type users see (errors.py), GGUF reading/writing (ggufio.py) and split
models, several GGUF files read and written as one (ggufsplit.py). Nothing here imports the converter, quantizer,
runtime, server or CLI."""
