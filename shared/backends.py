"""The backend registry: one interface, three frameworks.

Every backend module provides the same functions (docs/backends.md):

    load(params, config, dtype="float32") -> model
    export(model) -> canonical params
    forward(model, tokens) -> logits (B, T, V) as numpy
    activations(model, tokens) -> {"embed", "blocks.{i}", "final_ln", "logits"} as numpy
    loss_and_grads(model, tokens, targets) -> (loss, canonical gradients)
    generate(model, prompt, max_new_tokens, temperature=1.0, top_k=None, seed=None, use_cache=True)
    make_trainer(model, adamw, state=None, seed=0) -> trainer with step(tokens, targets, lr) and state()
"""

from __future__ import annotations

import importlib
from types import ModuleType

BACKENDS = {
    "torch": ("torch_impl.backend", "torch", "torch"),
    "jax": ("jax_impl.backend", "jax", "jax"),
    "numpy": ("numpy_impl.backend", "numpy", None),
}


def get_backend(name: str) -> ModuleType:
    """Import and return the backend module for name ("torch", "jax" or "numpy")."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known backends: {', '.join(BACKENDS)}")
    module_name, framework, extra = BACKENDS[name]
    try:
        importlib.import_module(framework)
    except ImportError:
        raise ImportError(
            f"backend {name!r} needs {framework}, which is not installed; "
            f"install it with: pip install 'trigpt[{extra}]'"
        ) from None
    return importlib.import_module(module_name)


def available_backends() -> list[str]:
    """Return the backends whose framework imports on this machine."""
    names = []
    for name, (_, framework, _) in BACKENDS.items():
        try:
            importlib.import_module(framework)
        except ImportError:
            continue
        names.append(name)
    return names
