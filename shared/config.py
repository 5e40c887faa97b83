"""GPTConfig: the one model config that every backend reads."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

GELU_APPROXIMATIONS = ("tanh", "none")

_INT_FIELDS = ("vocab_size", "context_length", "d_model", "num_heads", "num_layers", "mlp_expansion")
_BOOL_FIELDS = ("use_bias", "weight_tying", "pre_ln")


@dataclass(frozen=True)
class GPTConfig:
    """Hyperparameters of a GPT-2-style decoder. The defaults are GPT-2 small (124M)."""

    vocab_size: int = 50257
    context_length: int = 1024
    d_model: int = 768
    num_heads: int = 12
    num_layers: int = 12
    mlp_expansion: int = 4
    dropout: float = 0.1
    use_bias: bool = True
    weight_tying: bool = True
    pre_ln: bool = True
    layer_norm_eps: float = 1e-5
    gelu_approximation: str = "tanh"

    def __post_init__(self) -> None:
        for name in _INT_FIELDS:
            value = getattr(self, name)
            # bool is a subclass of int, so True would pass a plain isinstance check.
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"GPTConfig.{name} must be an int, got {value!r} ({type(value).__name__})")
            if value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value}")
        for name in _BOOL_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"GPTConfig.{name} must be True or False, got {value!r}")
        if self.d_model % self.num_heads != 0:
            raise ValueError(
                f"GPTConfig.d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads}); "
                f"choose num_heads among the divisors of {self.d_model}"
            )
        for name in ("dropout", "layer_norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"GPTConfig.{name} must be a number, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must satisfy 0 <= dropout < 1, got {self.dropout}")
        if not self.layer_norm_eps > 0.0:
            raise ValueError(f"GPTConfig.layer_norm_eps must be > 0, got {self.layer_norm_eps}")
        if self.gelu_approximation not in GELU_APPROXIMATIONS:
            raise ValueError(
                f"GPTConfig.gelu_approximation must be one of {GELU_APPROXIMATIONS}, "
                f"got {self.gelu_approximation!r}"
            )

    @property
    def head_size(self) -> int:
        return self.d_model // self.num_heads

    @property
    def d_mlp(self) -> int:
        return self.mlp_expansion * self.d_model

    def replace(self, **changes: Any) -> "GPTConfig":
        """Return a copy with the given fields changed, validated like a new config."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown GPTConfig field(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    # Serialisation.

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GPTConfig":
        if not isinstance(data, dict):
            raise ValueError(f"a GPTConfig is built from a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown GPTConfig field(s): {', '.join(unknown)}; known fields are {', '.join(sorted(known))}"
            )
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "GPTConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"invalid GPTConfig JSON: {error}") from None
        return cls.from_dict(data)

    # Presets and sizes.

    @classmethod
    def preset(cls, name: str) -> "GPTConfig":
        """Return a named preset: gpt2, gpt2-medium, gpt2-large, gpt2-xl or tiny."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
        return cls(**PRESETS[name])

    def num_parameters(self) -> int:
        """Count parameters from the config alone; a tied head is counted once."""
        from shared.weights import parameter_shapes

        total = 0
        for shape in parameter_shapes(self).values():
            count = 1
            for size in shape:
                count *= size
            total += count
        return total


PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": dict(d_model=768, num_heads=12, num_layers=12),
    "gpt2-medium": dict(d_model=1024, num_heads=16, num_layers=24),
    "gpt2-large": dict(d_model=1280, num_heads=20, num_layers=36),
    "gpt2-xl": dict(d_model=1600, num_heads=25, num_layers=48),
    # Byte-level model small enough to train on a 2-core CPU in a few minutes.
    "tiny": dict(vocab_size=256, context_length=128, d_model=128, num_heads=4, num_layers=4, dropout=0.0),
}
