"""trigpt's JAX/Flax NNX model, compiled with jax.jit."""

from jax_impl.convert import from_canonical, to_canonical
from jax_impl.generate import generate
from jax_impl.model import GPT, Block, CausalSelfAttention, FeedForward, LayerNorm, Linear, matmul
from jax_impl.train import Trainer

__all__ = [
    "GPT",
    "Block",
    "CausalSelfAttention",
    "FeedForward",
    "LayerNorm",
    "Linear",
    "matmul",
    "Trainer",
    "generate",
    "from_canonical",
    "to_canonical",
]
