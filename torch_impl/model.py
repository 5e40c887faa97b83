"""The PyTorch reference GPT: the model the other two backends are checked against.

Dimension legend, used in the shape comments below:
    B  batch size            T  sequence length        C  d_model
    V  vocabulary size       nh number of heads        hs head size (C // nh)
    H  MLP hidden size (mlp_expansion * C)
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from shared.config import GPTConfig
from shared.inputs import check_tokens
from shared.weights import INIT_STD, is_residual_projection

# torch's F.gelu calls the exact erf form "none", the name trigpt's config uses too.
_GELU_FORMS = {"tanh": "tanh", "none": "none"}


def onednn_linear_available() -> bool:
    """Say whether this torch build can run float32 linear layers through oneDNN."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return False
    return True


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Return x @ weight.T + bias for 2-D float32 x (N, in) and weight (out, in), computed by oneDNN."""
    # A private torch op. In torch 2.13, float32 torch.mm and F.linear call MKL's sgemm unless
    # reduced-precision matmul is allowed (seen with MKL_VERBOSE=1 and ONEDNN_VERBOSE=1).
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _OneDNNLinearFunction(torch.autograd.Function):
    """A float32 linear layer whose forward and backward GEMMs all run in oneDNN."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        rows = x.reshape(-1, x.shape[-1])  # (..., in) -> (N, in)
        y = _onednn_linear(rows, weight, bias)  # (N, in) @ (in, out) -> (N, out)
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, weight = ctx.saved_tensors
        rows = x.reshape(-1, x.shape[-1])  # (N, in)
        drows = dy.reshape(-1, dy.shape[-1])  # (N, out)
        dx = dweight = dbias = None
        if ctx.needs_input_grad[0]:
            dx = _onednn_linear(drows, weight.t().contiguous(), None).view(x.shape)  # (N, out) @ (out, in) -> (N, in)
        if ctx.needs_input_grad[1]:
            dweight = _onednn_linear(drows.t().contiguous(), rows.t().contiguous(), None)  # (out, N) @ (N, in) -> (out, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            dbias = drows.sum(0)  # (out,)
        return dx, dweight, dbias


class Linear(nn.Linear):
    """nn.Linear whose float32 GEMMs can run in oneDNN instead of MKL, a runtime option that is off by default.

    On an AMD CPU, MKL's sgemm runs its AVX2 code, while oneDNN uses AVX-512 where the CPU has
    it. On an Intel CPU, MKL uses AVX-512 itself. float64 and non-CPU tensors always take
    nn.Linear's path.
    NOTE: on a 2-core Intel Xeon this path was no faster than MKL; a gain on AMD CPUs is
    expected from their GEMM rates but has not been measured with this layer.
    """

    onednn = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.onednn and x.dtype == torch.float32 and x.device.type == "cpu":
            return _OneDNNLinearFunction.apply(x, self.weight, self.bias)
        return super().forward(x)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis with biased variance, as in GPT-2 and the other backends."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(size))
        self.shift = nn.Parameter(torch.zeros(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=-1, keepdim=True)
        centred = x - mean
        # The variance comes from the centred values, so a large mean costs no precision.
        variance = centred.pow(2).mean(dim=-1, keepdim=True)
        return centred * torch.rsqrt(variance + self.eps) * self.scale + self.shift


class KVCache:
    """Keys and values of the positions seen so far, per block: (B, nh, T_cached, hs) each."""

    def __init__(self, num_layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers

    @property
    def length(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[2]


class MultiHeadAttention(nn.Module):
    """Causal self-attention with one fused qkv projection."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_size = config.head_size
        self.qkv = Linear(config.d_model, 3 * config.d_model, bias=config.use_bias)
        self.out_proj = Linear(config.d_model, config.d_model, bias=config.use_bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout
        # True where a key comes after its query; these scores are replaced by -inf.
        future = torch.triu(torch.ones(config.context_length, config.context_length, dtype=torch.bool), diagonal=1)
        self.register_buffer("future", future, persistent=False)
        self.fused = False  # use F.scaled_dot_product_attention; a runtime option, not config

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        nh, hs = self.num_heads, self.head_size

        q, k, v = self.qkv(x).split(C, dim=2)  # (B, T, 3C) -> 3 x (B, T, C)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)

        past = 0
        if cache is not None:
            if cache.keys[layer] is not None:
                past = cache.keys[layer].shape[2]
                k = torch.cat([cache.keys[layer], k], dim=2)  # (B, nh, past + T, hs)
                v = torch.cat([cache.values[layer], v], dim=2)  # (B, nh, past + T, hs)
            cache.keys[layer], cache.values[layer] = k, v
        S = k.shape[2]  # key length: past + T

        future = self.future[past : past + T, :S]  # (T, S)
        if self.fused:
            # SDPA takes a boolean mask that is True where attention is allowed.
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=~future, dropout_p=self.dropout if self.training else 0.0
            )  # (B, nh, T, hs)
        else:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(hs)  # (B, nh, T, hs) @ (B, nh, hs, S) -> (B, nh, T, S)
            scores = scores.masked_fill(future, float("-inf"))
            probs = torch.softmax(scores, dim=-1)
            probs = self.attn_dropout(probs)
            y = probs @ v  # (B, nh, T, S) @ (B, nh, S, hs) -> (B, nh, T, hs)

        y = y.transpose(1, 2).contiguous().view(B, T, C)  # merge heads: (B, nh, T, hs) -> (B, T, C)
        return self.resid_dropout(self.out_proj(y))


class FeedForward(nn.Module):
    """fc1 -> GELU -> fc2 -> dropout."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc1 = Linear(config.d_model, config.d_mlp, bias=config.use_bias)
        self.fc2 = Linear(config.d_mlp, config.d_model, bias=config.use_bias)
        self.dropout = nn.Dropout(config.dropout)
        self.gelu_approximation = _GELU_FORMS[config.gelu_approximation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.gelu(self.fc1(x), approximate=self.gelu_approximation)  # (B, T, H)
        return self.dropout(self.fc2(hidden))  # (B, T, C)


class TransformerBlock(nn.Module):
    """One block. Pre-LN normalises inside each residual branch; post-LN after each residual add."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.pre_ln = config.pre_ln
        self.ln1 = LayerNorm(config.d_model, config.layer_norm_eps)
        self.attn = MultiHeadAttention(config)
        self.ln2 = LayerNorm(config.d_model, config.layer_norm_eps)
        self.mlp = FeedForward(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        if self.pre_ln:
            x = x + self.attn(self.ln1(x), cache, layer)
            x = x + self.mlp(self.ln2(x))
        else:
            x = self.ln1(x + self.attn(x, cache, layer))
            x = self.ln2(x + self.mlp(x))
        return x


class GPTModel(nn.Module):
    """GPT-2-style decoder: embeddings, a stack of blocks, a final LayerNorm and a bias-free head."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_embed = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_embed = nn.Embedding(config.context_length, config.d_model)
        self.embed_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.num_layers))
        self.final_ln = LayerNorm(config.d_model, config.layer_norm_eps)
        self.lm_head = Linear(config.d_model, config.vocab_size, bias=False)
        if config.weight_tying:
            # One Parameter, two users: the head's gradient lands in the embedding's.
            self.lm_head.weight = self.tok_embed.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as GPT-2: N(0, 0.02) weights, zero biases, residual projections scaled by 1/sqrt(2L)."""
        residual_scale = 1.0 / math.sqrt(2 * self.config.num_layers)
        for name, param in self.named_parameters():
            if name.endswith(".scale"):
                nn.init.ones_(param)
            elif name.endswith((".shift", ".bias")):
                nn.init.zeros_(param)
            else:
                std = INIT_STD * residual_scale if is_residual_projection(name) else INIT_STD
                nn.init.normal_(param, mean=0.0, std=std)

    def set_fused_attention(self, fused: bool) -> None:
        """Switch every block between the explicit attention and F.scaled_dot_product_attention."""
        for block in self.blocks:
            block.attn.fused = fused

    def set_onednn_linear(self, enabled: bool) -> None:
        """Run the float32 GEMMs of every linear layer, the head included, through oneDNN (or back through MKL)."""
        if enabled and not onednn_linear_available():
            raise RuntimeError(
                f"torch {torch.__version__} has no oneDNN linear op (torch.ops.mkldnn._linear_pointwise); "
                "leave set_onednn_linear off"
            )
        for module in self.modules():
            if isinstance(module, Linear):
                module.onednn = enabled

    def check_input(self, tokens: torch.Tensor, name: str = "tokens", allow_long: bool = False) -> None:
        """Raise ValueError unless tokens is an integer (B, T) tensor of in-range ids that fits the context."""
        if not isinstance(tokens, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of token ids, got {type(tokens).__name__}")
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor, got dtype {tokens.dtype}")
        check_tokens(tokens.detach().cpu().numpy(), self.config, name=name, allow_long=allow_long)

    def hidden_states(
        self, tokens: torch.Tensor, cache: KVCache | None = None, collect: dict | None = None
    ) -> torch.Tensor:
        """Run everything up to and including the final LayerNorm: (B, T) -> (B, T, C)."""
        B, T = tokens.shape
        start = 0 if cache is None else cache.length
        if start + T > self.config.context_length:
            raise ValueError(
                f"sequence length {start + T} exceeds context_length {self.config.context_length}; "
                f"crop the input to its last {self.config.context_length} tokens"
            )
        positions = torch.arange(start, start + T, device=tokens.device)  # (T,)
        x = self.tok_embed(tokens) + self.pos_embed(positions)  # (B, T, C) + (T, C) -> (B, T, C)
        if collect is not None:
            collect["embed"] = x
        x = self.embed_dropout(x)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
            if collect is not None:
                collect[f"blocks.{i}"] = x
        x = self.final_ln(x)
        if collect is not None:
            collect["final_ln"] = x
        return x

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None):
        """Return logits (B, T, V), or (logits, mean cross-entropy) when targets are given."""
        self.check_input(tokens)
        logits = self.lm_head(self.hidden_states(tokens))  # (B, T, C) @ (C, V) -> (B, T, V)
        if targets is None:
            return logits
        self.check_input(targets, name="targets")
        if targets.shape != tokens.shape:
            raise ValueError(f"targets have shape {tuple(targets.shape)} but tokens have {tuple(tokens.shape)}")
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))  # (B*T, V), (B*T,)
        return logits, loss


def count_parameters(model: nn.Module) -> int:
    """Count the parameters of a model; a tied head shares its tensor and is counted once."""
    return sum(param.numel() for param in model.parameters())
