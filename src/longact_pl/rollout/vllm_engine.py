"""vLLM engine lifecycle: start, a per-process registry, GPU pinning, weight pushes and sleep / wake.

The only module that imports vLLM (lazily, when an engine starts). Sampling lives in ``rollout/vllm.py``.

An engine starts from a config-only folder with random (``dummy``) weights; the policy's weights arrive by
the first push (``rollout/weight_push.py``), so a model loaded from a folder, one built in code and a run
resumed from a checkpoint take the same path. Engines are shared within a process by configuration
(:func:`shutdown_engines` stops them): two rollout objects for the same architecture reuse one engine, and
each pushes its own weights before using it.

Sleep (GPUs only): with ``sleep_level`` 1 or 2 the engine releases its KV cache (and, at level 1, offloads
its weights to CPU; at level 2, drops them) after every rollout, so the training phase gets that GPU memory
back, and wakes up before the next rollout (level 2 then needs a push, which happens anyway after a step).
vLLM supports sleep mode on CUDA, ROCm and XPU; elsewhere (CPU) the setting is ignored with a log line.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from longact_pl.rollout.memory import check_engine_memory, engine_start_bytes
from longact_pl.rollout.placement import (
    TP_FIELD,
    EnginePlacement,
    engine_of,
    place_engines,
    visible_devices,
)
from longact_pl.rollout.weight_push import (
    PushStats,
    iter_weights,
    largest_tensor_bytes,
    push_buckets,
    push_file,
)

log = logging.getLogger(__name__)

WORKER_EXTENSION = "longact_pl.rollout.vllm_worker.WeightSyncExtension"
SYNC_METHODS = ("bucket", "file")


@dataclass
class Engine:
    """A running ``vllm.LLM``, which rollout object's weights it holds, and its sleep state.

    Attributes:
        llm: The ``vllm.LLM``.
        folder: Its config-only model folder (removed at shutdown).
        workers: Worker processes taking part in each collective call.
        sleep_level: 0 (never sleeps), 1 or 2 (see the module docstring).
        owner: ``id`` of the rollout object whose weights it holds (``None``: random weights).
        asleep: Whether it is sleeping now.
        gpu_memory_utilization: ``rollout.gpu_memory_utilization`` (named when memory is short).
        released: GPU bytes its last sleep gave back (what waking needs free again).
        buckets_per_node: Weight buckets alive at once in this node's ``/dev/shm`` during a push.
    """

    llm: Any
    folder: tempfile.TemporaryDirectory
    workers: int = 1
    sleep_level: int = 0
    owner: int | None = None
    asleep: bool = False
    gpu_memory_utilization: float = 0.0
    released: int = 0
    buckets_per_node: int = 1

    def sleep(self) -> None:
        """Release the KV cache (and weights, by level) until :meth:`wake`; a no-op at level 0."""
        if self.sleep_level and not self.asleep:
            before = _free_gpu_bytes()
            self.llm.sleep(level=self.sleep_level)
            self.released = max(0, _free_gpu_bytes() - before)
            self.asleep = True

    def wake(self) -> None:
        """Reallocate everything released by :meth:`sleep`; level 2 forgets the weights (owner reset)."""
        if self.asleep:
            _hand_off(self.released, self.gpu_memory_utilization, self.sleep_level, "wake")
            self.llm.wake_up()
            self.asleep = False
            if self.sleep_level == 2:
                self.owner = None

    def push(
        self, policy: nn.Module, dtype: torch.dtype, method: str, bucket_bytes: int, sync_dir: str | None
    ) -> PushStats:
        """Push ``policy``'s weights (FSDP: every rank calls this at the same point; gathers are collectives).

        Args:
            policy: The (possibly sharded) policy.
            dtype: The engine's weight dtype.
            method: ``bucket`` (shared-memory buckets) or ``file`` (one safetensors file).
            bucket_bytes: Bucket size for ``bucket``.
            sync_dir: Folder of the file for ``file`` (``None`` = the system temp dir).
        """
        weights = iter_weights(policy)
        if method == "file":
            stats = push_file(self.llm.collective_rpc, weights, dtype, sync_dir)
        else:
            largest = largest_tensor_bytes(policy, dtype)
            stats = push_buckets(
                self.llm.collective_rpc,
                weights,
                dtype,
                self.workers,
                bucket_bytes,
                largest,
                self.buckets_per_node,
            )
        self.llm.reset_prefix_cache()
        return stats


_ENGINES: dict[str, Engine] = {}


def shutdown_engines() -> None:
    """Stop every engine started in this process (their worker processes exit)."""
    while _ENGINES:
        _, engine = _ENGINES.popitem()
        core = getattr(getattr(engine.llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        engine.folder.cleanup()


def model_class(policy: nn.Module) -> type:
    """The model's own class (FSDP2's ``fully_shard`` makes ``LlamaForCausalLM`` ``FSDPLlamaForCausalLM``)."""
    from torch.distributed.fsdp import FSDPModule

    return next(c for c in type(policy).__mro__ if not issubclass(c, FSDPModule))


def engine_for(policy: nn.Module, engine_args: dict[str, Any], sleep_level: int = 0) -> Engine:
    """The engine for ``policy``'s architecture and these arguments, started on first use."""
    if not getattr(policy.config, "architectures", None):  # a model built in code: vLLM needs its class
        policy.config.architectures = [model_class(policy).__name__]
    config_json = policy.config.to_json_string(use_diff=False)
    key = hashlib.sha256((config_json + repr(sorted(engine_args.items())) + str(sleep_level)).encode())
    if key.hexdigest() not in _ENGINES:
        _ENGINES[key.hexdigest()] = _start(policy, engine_args, sleep_level)
    return _ENGINES[key.hexdigest()]


def sleep_supported() -> bool:
    """Whether vLLM can sleep on this machine's platform (CUDA, ROCm, XPU; not CPU)."""
    from vllm.platforms import current_platform

    return bool(current_platform.is_sleep_mode_available())


def _start(policy: nn.Module, engine_args: dict[str, Any], sleep_level: int) -> Engine:
    from vllm import LLM  # heavy import, only when a vLLM rollout actually runs

    if sleep_level and not sleep_supported():
        log.info("rollout.sleep_level=%d ignored: vLLM sleeps on CUDA, ROCm or XPU devices only", sleep_level)
        sleep_level = 0
    folder = tempfile.TemporaryDirectory(prefix="longact-vllm-")
    policy.config.save_pretrained(folder.name)  # config only: weights arrive by the first push
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tp = tensor_parallel_size(engine_args)
    utilization = float(engine_args.get("gpu_memory_utilization") or 0.9)  # vLLM's default
    with _engine_gpus(tp):
        if torch.cuda.is_available():
            total = torch.cuda.mem_get_info()[1]
            _hand_off(engine_start_bytes(total, utilization), utilization, sleep_level, "start")
        llm = LLM(**engine_kwargs(folder.name, policy.config, engine_args, sleep_level))
    workers = len(llm.collective_rpc("worker_pid"))
    buckets = max(1, ranks_per_node() // tp)  # one pushing rank per TP group
    return Engine(
        llm=llm,
        folder=folder,
        workers=workers,
        sleep_level=sleep_level,
        gpu_memory_utilization=utilization,
        buckets_per_node=buckets,
    )


def ranks_per_node() -> int:
    """Trainer processes on this node: ``LOCAL_WORLD_SIZE`` (torchrun), else ``WORLD_SIZE`` up to the GPUs.

    Sizes the node's shared memory for weight buckets (one per pushing rank).
    """
    if os.environ.get("LOCAL_WORLD_SIZE"):
        return int(os.environ["LOCAL_WORLD_SIZE"])
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 1
    return max(1, min(int(os.environ.get("WORLD_SIZE", 1)), gpus))


def _free_gpu_bytes() -> int:
    """Free memory of this process's GPU (0 without CUDA)."""
    return torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else 0


def _hand_off(need: int, utilization: float, sleep_level: int, when: str) -> None:
    """Return the trainer's cached blocks to the GPU, then check the engine's ``need`` is free (CUDA)."""
    if not torch.cuda.is_available():
        return
    torch.cuda.empty_cache()  # the allocator's reserved-but-unused blocks are invisible to vLLM otherwise
    free, total = torch.cuda.mem_get_info()
    check_engine_memory(free, total, need, utilization, sleep_level, when)


def rope_overrides(config: Any) -> dict[str, Any]:
    """``hf_overrides`` carrying the policy's RoPE scaling and window (``{}`` when it has none).

    The engine's config folder already holds them (``save_pretrained``); passing them again keeps the engine
    on the trainer's scaling even where vLLM re-derives a config (``longact_pl.models.rope``).
    """
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") == "default":
        return {}
    return {"rope_parameters": dict(rope), "max_position_embeddings": config.max_position_embeddings}


def engine_kwargs(folder: str, config: Any, engine_args: dict[str, Any], sleep_level: int) -> dict[str, Any]:
    """The ``vllm.LLM`` keyword arguments of an engine for a model of ``config`` saved in ``folder``."""
    kwargs = {
        "model": folder,
        "load_format": "dummy",
        "skip_tokenizer_init": True,
        "logprobs_mode": "processed_logprobs",
        "worker_extension_cls": WORKER_EXTENSION,
        **({"enable_sleep_mode": True} if sleep_level else {}),
        **{k: v for k, v in engine_args.items() if v is not None},
    }
    overrides = rope_overrides(config)
    if overrides:
        kwargs["hf_overrides"] = {**overrides, **(kwargs.get("hf_overrides") or {})}
    return kwargs


def tensor_parallel_size(engine_args: dict[str, Any]) -> int:
    """The engine's TP size (``rollout.engine_kwargs.tensor_parallel_size``, default 1)."""
    return int(engine_args.get("tensor_parallel_size") or 1)


def node_engine(local_rank: int, ranks_per_node: int, gpus: int, tp: int) -> EnginePlacement:
    """The engine of node-local rank ``local_rank`` (node-local ranks and GPUs; ``rollout/placement.py``)."""
    return engine_of(local_rank, place_engines(ranks_per_node, ranks_per_node, gpus, tp))


@contextlib.contextmanager
def _engine_gpus(tp: int) -> Iterator[None]:
    """Start the engine's processes on its TP group's GPUs: they inherit ``CUDA_VISIBLE_DEVICES``.

    With one training rank per GPU (DDP/FSDP) the engine of a TP group of ``tp`` ranks sees exactly the
    group's ``tp`` GPUs (TP = 1: this rank's GPU alone; without this every engine would land on GPU 0, and
    with TP >= 2 vLLM's workers need ``tp`` visible devices). A no-op on CPU and with a single visible GPU.
    Refuses a rank that does not lead its group: it hosts no engine, it shares its leader's
    (``rollout/tp_share.py``, as ``VLLMRollout`` does).
    """
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        yield
        return
    gpus = torch.cuda.device_count()
    local_rank = torch.cuda.current_device()
    engine = node_engine(local_rank, int(os.environ.get("LOCAL_WORLD_SIZE") or gpus), gpus, tp)
    if engine.leader != local_rank:
        raise NotImplementedError(
            f"{TP_FIELD}={tp}: this rank (GPU {local_rank}) is in the engine led by GPU {engine.leader}, "
            "which alone starts it; the group's other ranks share it through rollout/tp_share.py "
            "(VLLMRollout does). An engine started on its own on every rank (e.g. a local judge) must use "
            "tensor_parallel_size=1"
        )
    old = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = visible_devices(engine, old.split(",") if old else None, gpus)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = old


def generate_greedy(
    engine: Engine, prompts: list[list[int]], max_tokens: int, stop_ids: list[int]
) -> list[list[int]]:
    """Greedy completions (token ids) of ``prompts`` on ``engine`` in one batch (e.g. an LLM judge's replies).

    Args:
        engine: A started engine holding the weights to run.
        prompts: Prompt token ids.
        max_tokens: Completion budget.
        stop_ids: Token ids that end a completion.
    """
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, stop_token_ids=stop_ids, detokenize=False)
    outputs = engine.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
    return [list(out.outputs[0].token_ids) for out in outputs]
