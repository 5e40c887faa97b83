"""The NumPy backend: a GPT-2-style model with a hand-written backward pass, AdamW and a KV cache."""
