"""Finding the projections LongAct masks, the modules their activations are measured on, and head_dim."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

MEASURE_AT = ("proj", "norm")


@dataclass(frozen=True)
class Target:
    """One masked projection.

    Attributes:
        name: Qualified module name inside the policy (``model.layers.3.self_attn.q_proj``).
        group: The target suffix it matched (``q_proj``); ``scope=global`` ranks within a group.
        linear: The ``nn.Linear`` whose weight rows (and bias entries) are masked.
        measured: The module whose forward output is scored (the linear itself, or its norm).
    """

    name: str
    group: str
    linear: nn.Linear
    measured: nn.Module

    @property
    def rows(self) -> int:
        """Output channels of the projection (rows of its weight)."""
        return self.linear.out_features


def head_dim_of(model: nn.Module) -> int:
    """Head dimension from a Hugging Face config: ``config.head_dim`` or ``hidden_size // heads``.

    Args:
        model: A Hugging Face model (its ``config`` may nest a text config).

    Raises:
        ValueError: If the model has no usable config.
    """
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError("the policy has no `config`; cannot infer head_dim for unit=rope_pair/head")
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    head_dim = getattr(config, "head_dim", None)
    if head_dim:
        return int(head_dim)
    hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    if not hidden or not heads:
        raise ValueError("config has neither head_dim nor hidden_size/num_attention_heads")
    return int(hidden) // int(heads)


def _norm_name(name: str) -> str:
    """``...self_attn.q_proj`` -> ``...self_attn.q_norm`` (Qwen3's per-head norms after q/k projections)."""
    parent, _, leaf = name.rpartition(".")
    base = leaf[: -len("_proj")] if leaf.endswith("_proj") else leaf
    return f"{parent}.{base}_norm" if parent else f"{base}_norm"


def find_targets(model: nn.Module, suffixes: tuple[str, ...], measure_at: str = "proj") -> list[Target]:
    """All ``nn.Linear`` modules whose qualified name ends with one of ``suffixes``, in module order.

    Args:
        model: The policy.
        suffixes: Module name suffixes (``q_proj``, ``k_proj``, ``v_proj``, ``gate_proj``...).
        measure_at: ``proj`` scores the projection output; ``norm`` scores the output of the sibling
            ``<x>_norm`` module (Qwen3 ``q_norm``/``k_norm``), flattened from ``[B, T, H, D]`` to
            ``[B, T, H*D]``.

    Raises:
        ValueError: On an unknown ``measure_at``, a suffix that matches no Linear, or a missing norm module.
    """
    if measure_at not in MEASURE_AT:
        raise ValueError(f"masking.measure_at={measure_at!r} is not supported; use one of {list(MEASURE_AT)}")
    if not suffixes:
        raise ValueError("masking.targets is empty; name at least one projection (e.g. [q_proj, k_proj])")
    modules = dict(model.named_modules())
    found: list[Target] = []
    for suffix in suffixes:
        hits = [
            (name, mod)
            for name, mod in modules.items()
            if isinstance(mod, nn.Linear) and (name == suffix or name.endswith("." + suffix))
        ]
        if not hits:
            raise ValueError(f"masking.targets: no nn.Linear module name ends with {suffix!r} in the policy")
        for name, linear in hits:
            measured: nn.Module = linear
            if measure_at == "norm":
                norm_name = _norm_name(name)
                if norm_name not in modules:
                    raise ValueError(
                        f"masking.measure_at=norm needs a norm module {norm_name!r} after {name!r}, "
                        "but the model has none (only Qwen3-style q_norm/k_norm models have it); "
                        "use masking.measure_at=proj"
                    )
                measured = modules[norm_name]
            found.append(Target(name=name, group=suffix, linear=linear, measured=measured))
    order = {name: i for i, name in enumerate(modules)}
    found.sort(key=lambda t: order[t.name])
    names = [t.name for t in found]
    if len(set(names)) != len(names):
        raise ValueError(f"masking.targets {list(suffixes)} match the same module twice")
    return found
