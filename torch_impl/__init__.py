"""trigpt's PyTorch reference model."""

from shared.config import GPTConfig
from torch_impl.convert import from_canonical, to_canonical
from torch_impl.generate import generate, top_k_filter
from torch_impl.model import FeedForward, GPTModel, LayerNorm, MultiHeadAttention, TransformerBlock, count_parameters
from torch_impl.prepost import prepost_experiment

__all__ = [
    "GPTConfig",
    "GPTModel",
    "TransformerBlock",
    "LayerNorm",
    "MultiHeadAttention",
    "FeedForward",
    "count_parameters",
    "top_k_filter",
    "generate",
    "prepost_experiment",
    "from_canonical",
    "to_canonical",
]
