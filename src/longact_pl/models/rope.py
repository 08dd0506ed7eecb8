"""One RoPE scaling (YaRN etc.) for the policy, the reference and the vLLM engine, and the window it gives.

``model.rope_scaling`` (e.g. ``{rope_type: yarn, factor: 2.0}``) is applied where each model is built
(the loaders pass :func:`scaled_config_fields` into the Hugging Face config); the reference model is a copy
of the policy and the vLLM engine starts from the policy's saved config plus the same fields as
``hf_overrides`` (``rollout/vllm_engine.py``), so all three use one scaling.

The effective window is ``base x factor``, where ``base`` is the model's own ``max_position_embeddings``
(or ``original_max_position_embeddings`` if given). The config gets ``max_position_embeddings = window`` and
``original_max_position_embeddings = base`` in the scaling: Transformers' YaRN and vLLM (0.32,
``_get_and_verify_max_len``) read ``max_position_embeddings`` as the already-scaled window for yarn,
longrope and llama3; for the other types (linear, dynamic) vLLM multiplies by ``factor`` itself, so their
``max_position_embeddings`` stays ``base``. ``rollout.max_model_len`` above the window is refused by
:func:`check_max_model_len` before anything starts (vLLM would refuse it at engine start).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

FIELD = "model.rope_scaling"
# rope types whose max_position_embeddings vLLM reads as already scaled (vllm/config/model.py)
SCALED_IN_CONFIG = ("yarn", "longrope", "llama3", "su", "deepseek_yarn", "deepseek_llama_scaling")


def _checked(rope_scaling: dict[str, Any]) -> tuple[str, float]:
    rope_type = rope_scaling.get("rope_type", rope_scaling.get("type"))
    factor = rope_scaling.get("factor")
    if not rope_type or not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor < 1:
        raise ValueError(
            f"{FIELD} needs rope_type and a factor >= 1, e.g. {FIELD}={{rope_type: yarn, factor: 2.0}}; "
            f"got {dict(rope_scaling)!r}"
        )
    return str(rope_type), float(factor)


def effective_window(max_position_embeddings: int, rope_scaling: dict[str, Any] | None) -> int:
    """Longest sequence (prompt + completion) the model takes with ``rope_scaling`` (``None``: unscaled).

    Args:
        max_position_embeddings: The model's own window (its config before scaling).
        rope_scaling: ``model.rope_scaling``.
    """
    if not rope_scaling:
        return int(max_position_embeddings)
    _, factor = _checked(rope_scaling)
    base = int(rope_scaling.get("original_max_position_embeddings") or max_position_embeddings)
    return int(base * factor)


def scaled_config_fields(max_position_embeddings: int, rope_scaling: dict[str, Any] | None) -> dict[str, Any]:
    """Config fields that apply ``rope_scaling`` to a model whose own window is ``max_position_embeddings``.

    Returns ``{}`` without scaling; else ``rope_scaling`` (with ``original_max_position_embeddings``) and
    ``max_position_embeddings`` as Transformers and vLLM read them (see the module docstring).
    """
    if not rope_scaling:
        return {}
    rope_type, factor = _checked(rope_scaling)
    base = int(rope_scaling.get("original_max_position_embeddings") or max_position_embeddings)
    scaling = {**dict(rope_scaling), "rope_type": rope_type, "factor": factor}
    scaling.pop("type", None)
    scaling["original_max_position_embeddings"] = base
    window = int(base * factor) if rope_type in SCALED_IN_CONFIG else base
    return {"rope_scaling": scaling, "max_position_embeddings": window}


def check_max_model_len(
    max_model_len: int | None, max_position_embeddings: int, rope_scaling: dict[str, Any] | None
) -> None:
    """Refuse ``rollout.max_model_len`` above the effective window, naming both fixes.

    Raises:
        ValueError: ``max_model_len`` exceeds :func:`effective_window`.
    """
    if max_model_len is None:
        return
    window = effective_window(max_position_embeddings, rope_scaling)
    if max_model_len <= window:
        return
    base = int((rope_scaling or {}).get("original_max_position_embeddings") or max_position_embeddings)
    factor = math.ceil(max_model_len / base * 4) / 4  # a quarter step above what is needed
    raise ValueError(
        f"rollout.max_model_len={max_model_len} exceeds the model's window of {window} tokens "
        f"(max_position_embeddings {base}"
        + (f" x {FIELD}.factor {_checked(rope_scaling)[1]:g}" if rope_scaling else ", no rope scaling")
        + f"): set '{FIELD}={{rope_type: yarn, factor: {factor:g}}}' (the policy, reference and vLLM engine "
        f"all use it) or lower rollout.max_model_len to <= {window}"
    )


def with_rope_scaling(config: Any, rope_scaling: dict[str, Any] | None) -> Any:
    """A copy of a Hugging Face ``config`` with ``rope_scaling`` applied (``config`` itself if ``None``).

    The config is rebuilt from its dict (setting the fields on a built config would drop ``rope_theta`` in
    Transformers 5, whose ``rope_parameters`` hold both).
    """
    fields = scaled_config_fields(config.max_position_embeddings, rope_scaling)
    if not fields:
        return config
    data = config.to_dict()
    theta = (data.get("rope_parameters") or {}).get("rope_theta", data.get("rope_theta"))
    data["rope_parameters"] = {
        **({"rope_theta": theta} if theta is not None else {}),
        **fields["rope_scaling"],
    }
    data.pop("rope_scaling", None)
    data["max_position_embeddings"] = fields["max_position_embeddings"]
    scaled = type(config)(**data)
    scaled._attn_implementation = getattr(config, "_attn_implementation", None)
    return scaled


def check_policy_window(max_model_len: int | None, config: Any) -> None:
    """:func:`check_max_model_len` for a built model's ``config`` (its scaling already applied)."""
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") == "default":
        check_max_model_len(max_model_len, config.max_position_embeddings, None)
        return
    base = rope.get("original_max_position_embeddings") or config.max_position_embeddings
    check_max_model_len(max_model_len, base, {**rope, "original_max_position_embeddings": base})


def check_folder_window(
    name_or_path: str | None, rope_scaling: dict | None, max_model_len: int | None
) -> None:
    """Early form of the check, before any weights load: reads a local model folder's ``config.json``.

    A no-op without ``max_model_len`` or a local folder (hub ids and built-in models are checked by
    :func:`check_policy_window` once built, still before the engine starts).
    """
    if max_model_len is None or not name_or_path:
        return
    path = Path(name_or_path) / "config.json"
    if not path.is_file():
        return
    data = json.loads(path.read_text())
    base = data.get("max_position_embeddings")
    if isinstance(base, int):
        check_max_model_len(max_model_len, base, rope_scaling)
