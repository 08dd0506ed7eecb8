"""Data-parallel strategies for ``LongActModule``: DDP and FSDP2, both with optional activation checkpointing.

Both expose ``parallelize(module)``, which ``LongActModule.configure_model`` calls once the process group
exists (it is idempotent: ``trainer.validate`` then ``trainer.fit`` call it twice).

FSDP2 (Lightning's ``ModelParallelStrategy`` + ``torch.distributed.fsdp.fully_shard``) rather than FSDP1
(``FSDPStrategy``): FSDP2 keeps every parameter as its own ``DTensor`` sharded on dim 0, so each rank holds a
contiguous block of ``W_Q``/``W_K`` rows and LongAct's row masks map onto local rows exactly
(``masking/sharding.py``), with optimizer hooks seeing ordinary per-parameter tensors. FSDP1 flattens a
wrapped module's parameters into one ``FlatParameter`` whose shard boundaries cut through rows.

The frozen reference model (held outside ``nn.Module`` registration, see ``module._FrozenReference``) is
sharded the same way, so it costs ``1 / world_size`` of a full copy per rank; its forward all-gathers layer by
layer.

Sequence parallelism (``LongActFSDP(sequence_parallel_size=N)``): the ranks form a 2-D mesh
``(data_parallel, sequence_parallel)``; FSDP2 shards over all of it (the flattened mesh), the N ranks of a
sequence-parallel group get the same prompts (samplers deal by data-parallel rank,
``distributed.data_parallel_rank``) and the same rollouts (``DistOps.share``), and split every sequence of
the log-prob passes between them (Ulysses, ``longact_pl.ops.sequence_parallel``).
"""

from __future__ import annotations

from datetime import timedelta

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, ParallelStrategy
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    FSDPModule,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
)

from longact_pl.ops.chunked import lm_head_of
from longact_pl.ops.sequence_parallel import SPGroup, check_heads, enable_ulysses
from longact_pl.ops.shared_prefix import full_attention_only
from longact_pl.precision import fsdp_mixed_precision

SP_FIELD = "trainer.strategy.sequence_parallel_size"


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each decoder layer's activations in backward (Hugging Face, non-reentrant)."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks: modules whose class is in the model's ``_no_split_modules``.

    Raises:
        ValueError: If the model declares no such class or none is found.
    """
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(
            f"cannot find the decoder layers of {type(model).__name__} (no _no_split_modules) to shard"
        )
    return layers


def offload_policy(cpu_offload: bool) -> OffloadPolicy:
    """FSDP2's CPU offload (pinned host memory where CUDA is available), or no offload."""
    return CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if cpu_offload else OffloadPolicy()


def move_model(model: nn.Module, device: torch.device, cpu_offload: bool = False) -> None:
    """``model.to(device)``; a CPU-offloaded model moves its buffers only (parameters stay in CPU memory)."""
    if not cpu_offload:
        model.to(device)
        return
    for module in model.modules():
        for name, buffer in module.named_buffers(recurse=False):
            module._buffers[name] = buffer.to(device)


def shard_model(
    model: nn.Module,
    mesh,
    reshard_after_forward: bool = True,
    mp_policy: MixedPrecisionPolicy | None = None,
    cpu_offload: bool = False,
) -> None:
    """``fully_shard`` every decoder layer, then the root (embeddings, final norm, LM head, tied or not).

    ``mp_policy`` (``None``: FSDP2's default, no casting) sets the dtype parameters are gathered in and
    gradients reduced in (:func:`longact_pl.precision.fsdp_mixed_precision`). ``cpu_offload`` keeps the
    sharded parameters, their gradients and so the optimizer state in CPU memory (FSDP2's
    ``CPUOffloadPolicy``): each layer is copied to the device for its forward/backward and the optimizer
    steps on the CPU. Also marks the model
    FSDP-managed so Hugging Face ``generate`` keeps ranks in lock-step
    (``synced_gpus``): a rank whose sequences all ended keeps running forwards until every rank is done.
    """
    kwargs = dict(
        mesh=mesh,
        reshard_after_forward=reshard_after_forward,
        mp_policy=mp_policy or MixedPrecisionPolicy(),
        offload_policy=offload_policy(cpu_offload),
    )
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    model._is_fsdp_managed_module = True


class LongActDDP(DDPStrategy):
    """DDP: every rank holds the whole policy, generates for its own prompts, and gradients are averaged.

    Args:
        activation_checkpointing: Recompute activations in backward.
        process_group_backend: ``nccl`` / ``gloo`` (``None`` = Lightning's choice for the accelerator).
        find_unused_parameters: DDP's flag; keep ``False`` unless parts of the model get no gradient.
        timeout: Collective timeout in seconds.
        sequence_parallel_size: Must be 1 (sequence parallelism needs ``strategy=fsdp``).
    """

    def __init__(
        self,
        activation_checkpointing: bool = False,
        process_group_backend: str | None = None,
        find_unused_parameters: bool = False,
        timeout: float = 1800.0,
        sequence_parallel_size: int = 1,
    ) -> None:
        if sequence_parallel_size != 1:
            raise ValueError(
                f"{SP_FIELD}={sequence_parallel_size} needs strategy=fsdp: DDP keeps a whole model per rank "
                "and has no sequence-parallel groups (use strategy=fsdp, or sequence_parallel_size=1)"
            )
        super().__init__(
            process_group_backend=process_group_backend,
            find_unused_parameters=find_unused_parameters,
            timeout=timedelta(seconds=timeout),
        )
        self.activation_checkpointing = activation_checkpointing

    def parallelize(self, module: pl.LightningModule) -> None:
        """Turn on activation checkpointing of the policy (DDP itself wraps the module later)."""
        if self.activation_checkpointing:
            enable_activation_checkpointing(module.policy)


class LongActFSDP(ModelParallelStrategy):
    """FSDP2 over all ranks (every device of every node shards the model), optionally sequence parallel.

    With ``trainer.precision=bf16-mixed`` the fp32 sharded parameters are all-gathered in bf16 and gradients
    reduce-scattered in fp32 (:func:`longact_pl.precision.fsdp_mixed_precision`), on top of Lightning's
    autocast; the frozen reference model is gathered in bf16 too.

    Args:
        activation_checkpointing: Recompute each decoder layer's activations in backward.
        reshard_after_forward: Free the gathered parameters after each layer's forward (ZeRO-3); ``False``
            keeps them until backward (ZeRO-2-like, more memory, fewer all-gathers).
        save_distributed_checkpoint: One shard file per rank (``True``) or one full checkpoint file
            gathered on rank 0 (``False``).
        process_group_backend: ``nccl`` / ``gloo`` (``None`` = Lightning's choice for the accelerator).
        timeout: Collective timeout in seconds.
        sequence_parallel_size: N ranks share each rollout batch and split its sequences (Ulysses); must
            divide the world size and the model's attention heads. 1 = pure data parallel.
        cpu_offload: Keep parameters, gradients and AdamW states in CPU memory (FSDP2 ``CPUOffloadPolicy``;
            the memory plan, ``longact_pl.memory``, shows what it saves).
    """

    def __init__(
        self,
        activation_checkpointing: bool = True,
        reshard_after_forward: bool = True,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout: float = 1800.0,
        sequence_parallel_size: int = 1,
        cpu_offload: bool = False,
    ) -> None:
        if sequence_parallel_size < 1:
            raise ValueError(f"{SP_FIELD} must be >= 1, got {sequence_parallel_size}")
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timedelta(seconds=timeout),
        )
        self.activation_checkpointing = activation_checkpointing
        self.reshard_after_forward = reshard_after_forward
        self.sequence_parallel_size = sequence_parallel_size
        self.cpu_offload = cpu_offload

    def model_to_device(self) -> None:
        """Move the model to the device; with ``cpu_offload`` its parameters stay in CPU memory."""
        move_model(self.model, self.root_device, self.cpu_offload)

    def check_model(self, model: nn.Module) -> None:
        """Refuse settings that cannot run, before anything is written (``train.run`` calls it).

        Raises:
            ValueError: If the sequence-parallel size does not divide the world size or the head counts.
            NotImplementedError: For models the sequence-parallel log-prob passes do not cover.
        """
        size, world = self.sequence_parallel_size, self.num_nodes * self.num_processes
        if size == 1:
            return
        if world % size:
            raise ValueError(
                f"{SP_FIELD}={size} must divide the world size ({world} = trainer.num_nodes x "
                "trainer.devices): each data-parallel group is that many ranks"
            )
        check_heads(model.config, size)
        if not full_attention_only(model):
            raise NotImplementedError(f"{SP_FIELD} > 1 needs a full-attention model (no sliding window)")
        lm_head_of(model)

    def setup_environment(self) -> None:
        """A ``(data_parallel, sequence_parallel)`` mesh over every process (no tensor parallelism).

        What ``ModelParallelStrategy.setup_environment`` does, with the second dimension named for what it
        holds; ``distributed_sampler_kwargs`` count ``data_parallel`` ranks only, so a sequence-parallel group
        sees the same prompts.
        """
        world = self.num_nodes * self.num_processes
        if world % self.sequence_parallel_size:
            raise ValueError(f"{SP_FIELD}={self.sequence_parallel_size} must divide the world size ({world})")
        self._data_parallel_size = world // self.sequence_parallel_size
        self._tensor_parallel_size = 1
        ParallelStrategy.setup_environment(self)
        self._setup_distributed()
        self._device_mesh = init_device_mesh(
            self.root_device.type,
            (self._data_parallel_size, self.sequence_parallel_size),
            mesh_dim_names=("data_parallel", "sequence_parallel"),
        )
        self.lightning_module._device_mesh = self._device_mesh

    @property
    def sequence_parallel(self) -> SPGroup | None:
        """The sequence-parallel group of this rank (``None`` without sequence parallelism)."""
        if self.sequence_parallel_size == 1:
            return None
        return SPGroup.of(self.device_mesh["sequence_parallel"].get_group())

    def parallelize(self, module: pl.LightningModule) -> None:
        """Shard the policy and the frozen reference model over the whole mesh (once).

        With sequence parallelism both switch to Ulysses attention; the log-prob passes take the
        sequence-split paths through the collectives' group (``StrategyOps.sequence_parallel``).
        """
        if isinstance(module.policy, FSDPModule):
            return
        if self.activation_checkpointing:
            enable_activation_checkpointing(module.policy)
        mesh = self.device_mesh
        mesh = mesh["data_parallel"] if self.sequence_parallel_size == 1 else mesh._flatten("fsdp")
        mp_policy = fsdp_mixed_precision(self.precision_plugin.precision)
        for model in (module.policy, getattr(module, "ref_model", None)):
            if model is not None:
                if self.sequence_parallel_size > 1:
                    enable_ulysses(model, self.sequence_parallel_size)
                shard_model(model, mesh, self.reshard_after_forward, mp_policy, self.cpu_offload)
