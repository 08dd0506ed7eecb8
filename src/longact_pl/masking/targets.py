"""Finding the projections LongAct masks, where their activations are measured, and head_dim.

A *target* is the part of an ``nn.Linear`` that is scored and masked: the whole projection (``q_proj``), or
the query or key rows of a fused Q/K/V projection (``qkv_proj[q]``, see ``masking/fused.py``). Its *probe*
says where its activations are read (``measure_at``):

* ``proj``: the projection output (the target's rows of it);
* ``norm``: the output of Qwen3's ``q_norm`` / ``k_norm`` after the projection;
* ``post_rope``: the queries / keys as the attention function receives them (after any q/k norm and RoPE),
  recorded by wrapping the model's attention function (``masking/attention_tap.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from longact_pl.masking.fused import fused_parts, is_fused
from longact_pl.masking.stats import Probe

MEASURE_AT = ("proj", "norm", "post_rope")
# leaf name of a separate projection -> what it produces (fused parts get theirs from masking/fused.py)
ROLES = {"q_proj": "q", "k_proj": "k"}


@dataclass(frozen=True, eq=False)
class Target:
    """One masked projection, or the query/key part of a fused one.

    Attributes:
        name: Unique name: the module name (``model.layers.3.self_attn.q_proj``), plus ``[q]`` / ``[k]`` for
            the parts of a fused module.
        group: The target suffix it matched (``q_proj``, ``qkv_proj[q]``); ``scope=global`` ranks within it.
        module: Qualified name of the ``nn.Linear``.
        linear: The ``nn.Linear`` whose weight rows (and bias entries) are masked.
        probe: Where the scored activations are read.
        role: ``q`` (queries), ``k`` (keys) or ``""`` (any other projection).
        attention: Qualified name of the module holding the projection (the attention layer for q/k).
        part_rows: The rows of ``linear`` this target covers, in head-major order (``None``: all rows).
    """

    name: str
    group: str
    module: str
    linear: nn.Linear
    probe: Probe
    role: str = ""
    attention: str = ""
    part_rows: Tensor | None = None

    @property
    def rows(self) -> int:
        """Output channels of the target (rows of its part of the weight)."""
        return self.linear.out_features if self.part_rows is None else int(self.part_rows.numel())

    @property
    def measured(self) -> nn.Module:
        """The module whose forward (output or attention inputs) is measured."""
        return self.probe.module


def text_config(model: nn.Module):
    """The (text) config of a Hugging Face model.

    Raises:
        ValueError: If the model has no ``config``.
    """
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError("the policy has no `config`; cannot infer its heads for LongAct masking")
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def head_dim_of(model: nn.Module) -> int:
    """Head dimension from a Hugging Face config: ``config.head_dim`` or ``hidden_size // heads``.

    Args:
        model: A Hugging Face model (its ``config`` may nest a text config).

    Raises:
        ValueError: If the model has no usable config.
    """
    config = text_config(model)
    head_dim = getattr(config, "head_dim", None)
    if head_dim:
        return int(head_dim)
    hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    if not hidden or not heads:
        raise ValueError("config has neither head_dim nor hidden_size/num_attention_heads")
    return int(hidden) // int(heads)


def norm_name(name: str) -> str:
    """``...self_attn.q_proj`` -> ``...self_attn.q_norm`` (Qwen3's per-head norms after q/k projections)."""
    parent, _, leaf = name.rpartition(".")
    base = leaf[: -len("_proj")] if leaf.endswith("_proj") else leaf
    return f"{parent}.{base}_norm" if parent else f"{base}_norm"


def _probe(modules: dict[str, nn.Module], name: str, linear: nn.Linear, role: str, rows, measure_at: str):
    """Where the target's activations are read, or a clear error when ``measure_at`` cannot apply."""
    if measure_at == "proj":
        return Probe(linear, columns=rows)
    if measure_at == "norm":
        if rows is not None or norm_name(name) not in modules:
            raise ValueError(
                f"masking.measure_at=norm needs a norm module {norm_name(name)!r} after {name!r}, "
                "but the model has none (only Qwen3-style q_norm/k_norm models have it); "
                "use masking.measure_at=proj or post_rope"
            )
        return Probe(modules[norm_name(name)])
    if not role:
        raise ValueError(
            f"masking.measure_at=post_rope measures queries and keys as attention reads them; {name!r} is "
            "neither (target q_proj/k_proj or a fused Q/K/V projection, or use masking.measure_at=proj)"
        )
    return Probe(modules[name.rpartition(".")[0]], read="query" if role == "q" else "key")


def find_targets(model: nn.Module, suffixes: tuple[str, ...], measure_at: str = "proj") -> list[Target]:
    """All targets whose qualified ``nn.Linear`` name ends with one of ``suffixes``, in module order.

    Args:
        model: The policy.
        suffixes: Module name suffixes (``q_proj``, ``k_proj``, ``qkv_proj``, ``gate_proj``...). A fused Q/K/V
            projection yields its query and key parts.
        measure_at: ``proj``, ``norm`` (Qwen3 ``q_norm``/``k_norm`` output, flattened from
            ``[B, T, H, D]``) or ``post_rope`` (queries/keys as the attention function receives them).

    Raises:
        ValueError: On an unknown ``measure_at``, a suffix that matches no Linear, a fused module of unknown
            layout, or a ``measure_at`` the target cannot be measured at.
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
            parent = name.rpartition(".")[0]
            if is_fused(name):
                parts = fused_parts(model, name, linear).items()
                named = [(f"{name}[{role}]", f"{suffix}[{role}]", role, rows) for role, rows in parts]
            else:
                named = [(name, suffix, ROLES.get(name.rpartition(".")[2], ""), None)]
            for tname, group, role, rows in named:
                probe = _probe(modules, name, linear, role, rows, measure_at)
                found.append(Target(tname, group, name, linear, probe, role, parent, rows))
    order = {name: i for i, name in enumerate(modules)}
    found.sort(key=lambda t: order[t.module])  # stable: a fused module's [q] before its [k]
    names = [t.name for t in found]
    if len(set(names)) != len(names):
        raise ValueError(f"masking.targets {list(suffixes)} match the same module twice")
    return found


def qk_norms(model: nn.Module, targets: list[Target]) -> list[nn.Module]:
    """The ``q_norm`` / ``k_norm`` modules right after the query/key targets (for ``norms=frozen``).

    Raises:
        ValueError: If a query/key target has no such norm (only Qwen3-style models have them).
    """
    modules = dict(model.named_modules())
    norms: list[nn.Module] = []
    for t in targets:
        if not t.role:
            continue
        norm = modules.get(norm_name(t.module)) if t.part_rows is None else None
        if norm is None:
            raise ValueError(
                f"masking.norms=frozen: {type(model).__name__} has no {norm_name(t.module)!r} after "
                f"{t.module!r} (only Qwen3-style q_norm/k_norm models have it); use masking.norms=dense"
            )
        if all(norm is not n for n in norms):
            norms.append(norm)
    if not norms:
        raise ValueError("masking.norms=frozen needs q_proj/k_proj among masking.targets")
    return norms
