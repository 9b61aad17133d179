"""The base every layer stands on: the error type users see (errors.py) and GGUF reading/writing (ggufio.py). Nothing
here imports the converter, quantizer, runtime, server or CLI."""
