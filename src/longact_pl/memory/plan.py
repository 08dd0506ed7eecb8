"""Per-rank peak memory of one training step, from the model's shape and the run's settings (pure).

The step's memory is static state (parameters, gradients, AdamW's two moments, the frozen reference model,
autocast's bf16 weight copies, FSDP's gathered layers, a colocated vLLM engine) plus what one micro-batch's
log-prob pass keeps for its backward. The shared-prompt pass runs each group's prompt once and its
completions on the prompt's keys/values, in one of two orders:

* **interleaved** (``ops/interleaved.py``, the default wherever the shared prompt runs without sequence
  parallelism): layer by layer, prompt then completions through each layer, both in one checkpoint under
  activation checkpointing. The backward finishes layer ``i`` (completions, then prompt) before layer
  ``i - 1``: one layer's prompt keys/values and their gradients exist at a time, recomputed inside the
  layer's checkpoint instead of held.
* **two-pass** (``ops/shared_prefix.py`` with ``interleave=False``; the sequence-parallel path,
  ``ops/sequence_parallel/``, always): every prompt through all layers, then the completions. Autograd runs
  the whole completion backward before the prompt's (the completion nodes were created later), so at the
  switch every layer's prompt keys/values **and their gradients** are held at once: the plan shows that
  hold as its own terms (``prompt K/V held``, ``prompt K/V gradients``).

Phases whose totals are compared (the peak is the largest):

* ``head backward``: everything the forward kept, plus one LM-head chunk's logits being recomputed;
* interleaved: ``layer backward``: the same, plus one layer's completions and prompt recomputed together
  and that layer's key/value gradients;
* two-pass: ``completion backward``: the same, the LM-head chunk replaced by one completion layer's
  recomputation; ``prompt backward``: the completion pass's activations freed, the prompt's kept, every
  layer's prompt K/V and their gradients held, one prompt layer recomputed (the "switch");
* ``optimizer step``: AdamW's temporaries (foreach: one float32 copy of the local parameters; fused: none).

Terms are bytes per rank; ``host`` terms live in CPU memory (FSDP2 CPU offload; the same memory as the
device when training on the CPU).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from longact_pl.memory.activations import (
    backward_transient_per_token,
    compute_bytes,
    kv_bytes_per_token,
    layer_bytes_per_token,
    mixed,
)
from longact_pl.memory.shapes import ModelShape
from longact_pl.ops.head_blocks import head_scratch_bytes

GIB = 2**30
KV_HOLD = "prompt K/V held"
KV_GRADS = "prompt K/V gradients"


# ops/attention_kernels.KERNELS (not imported: the plan runs without torch)
PACKED_KERNELS = ("sdpa_mask", "flex", "flash_varlen")


@dataclass(frozen=True)
class Settings:
    """What the plan needs of a run, per rank.

    Attributes:
        prompt_tokens: Prompt tokens of one micro-batch (each group's prompt once; without
            ``shared_prefix`` every row's prompt).
        completion_tokens: Completion tokens of one micro-batch (packed: real tokens; padded: rows x width).
        completion_rows: Completions in the micro-batch (the padded pass repeats the prompt's keys per row).
        precision: Lightning precision (``bf16-mixed``, ``32-true``, ...).
        param_bytes: Bytes per parameter (4: float32 master weights).
        strategy: ``single``, ``ddp`` or ``fsdp``.
        world: Ranks the model is sharded over (FSDP) or replicated on.
        cpu_offload: FSDP2 CPU offload of parameters, gradients and optimizer state.
        activation_checkpointing: Each decoder layer recomputed in backward.
        sequence_parallel: Ranks splitting every sequence (Ulysses).
        shared_prefix: The prompt runs once per group (else each row runs prompt + completion).
        packed: Completions packed in one row (else padded rows, each attending to a broadcast prompt).
        interleaved: The shared-prompt pass runs layer by layer (``ops/interleaved.py``); without sequence
            parallelism only (the sequence-parallel pass is two-pass whatever this says).
        logprob_chunk: Tokens per LM-head chunk (``None``: all at once).
        reference: A frozen reference model is held (``algo.kl_coef > 0``).
        optimizer: ``foreach`` (CUDA default), ``single_tensor`` (CPU default) or ``fused``.
        device: ``cuda`` or ``cpu``.
        packed_kernel: The packed pass's attention kernel (``ops/attention_kernels.KERNELS``): ``sdpa_mask``
            builds the dense ``[T, P + T]`` mask (every rank the whole one under sequence parallelism) and,
            per layer, its float copy and the GQA-repeated keys/values; ``flex`` / ``flash_varlen`` build
            neither (a block mask of a few MiB; GQA without repeating).
        engine_bytes: A colocated vLLM engine's share of this device during training.
        engine_host_bytes: What the engine keeps in CPU memory (weights offloaded by sleep level 1, or a
            CPU engine's weights and KV cache).
        frozen_fraction: Share of the q_proj/k_proj rows LongAct freezes (``1 - masking.ratio``; 0: no
            masks); the optimizer hooks keep a copy of them.
    """

    prompt_tokens: int
    completion_tokens: int
    completion_rows: int = 1
    precision: str = "bf16-mixed"
    param_bytes: int = 4
    strategy: str = "single"
    world: int = 1
    cpu_offload: bool = False
    activation_checkpointing: bool = True
    sequence_parallel: int = 1
    shared_prefix: bool = True
    packed: bool = True
    interleaved: bool = True
    logprob_chunk: int | None = 1024
    reference: bool = False
    optimizer: str = "foreach"
    packed_kernel: str = "sdpa_mask"
    device: str = "cuda"
    engine_bytes: int = 0
    engine_host_bytes: int = 0
    frozen_fraction: float = 0.0


@dataclass
class Term:
    """One line of the plan: ``name``, bytes per rank, ``host`` (CPU memory) or device, and what it is."""

    name: str
    bytes: int
    note: str = ""
    host: bool = False


@dataclass
class MemoryPlan:
    """Static terms, each phase's transient terms, and the peak.

    Attributes:
        shape: The model.
        settings: The run.
        static: Terms held through the whole step.
        phases: Phase name -> its transient terms.
    """

    shape: ModelShape
    settings: Settings
    static: list[Term]
    phases: dict[str, list[Term]] = field(default_factory=dict)

    def phase_total(self, phase: str) -> int:
        """Device bytes in ``phase`` (host terms excluded; on a CPU device the host terms are added)."""
        terms = self.static + self.phases[phase]
        on_cpu = self.settings.device == "cpu"
        return sum(t.bytes for t in terms if on_cpu or not t.host)

    @property
    def peak_phase(self) -> str:
        """The phase with the largest total."""
        return max(self.phases, key=self.phase_total)

    @property
    def peak(self) -> int:
        """Predicted peak bytes of the device (on CPU: of the process) per rank."""
        return self.phase_total(self.peak_phase)

    @property
    def host(self) -> int:
        """Bytes in CPU memory per rank (offloaded state), at the peak phase."""
        return sum(t.bytes for t in self.static + self.phases[self.peak_phase] if t.host)

    @property
    def interleaved(self) -> bool:
        """The shared-prompt pass runs layer by layer (no switch, no all-layer hold)."""
        s = self.settings
        return runs_interleaved(s)

    @property
    def peak_without_hold(self) -> int:
        """The peak if the prompt's K/V and their gradients were not held at the switch (two-pass plans).

        What a backward that interleaves prompt and completion layers could gain at most; an interleaved
        plan's own peak.
        """
        hold = self.term(KV_HOLD, "prompt backward") + self.term(KV_GRADS, "prompt backward")
        return max(self.phase_total(p) - (hold if p == "prompt backward" else 0) for p in self.phases)

    def term(self, name: str, phase: str | None = None) -> int:
        """Bytes of the term ``name`` (static, or in ``phase``; 0 when absent)."""
        terms = self.static + (self.phases.get(phase, []) if phase else [])
        return sum(t.bytes for t in terms if t.name == name)


def _static(shape: ModelShape, s: Settings) -> list[Term]:
    n, pb = shape.params, s.param_bytes
    shard = s.world if s.strategy == "fsdp" else 1
    local = -(-n // shard)
    off = s.strategy == "fsdp" and s.cpu_offload
    where = "CPU (offload)" if off else ("sharded" if shard > 1 else "whole model")
    terms = [
        Term("parameters", local * pb, f"{n / 1e9:.3g}B x {pb} B, {where}", off),
        Term("gradients", local * pb, f"same dtype as the parameters, {where}", off),
        Term("AdamW moments", 2 * local * pb, f"exp_avg + exp_avg_sq, {where}", off),
    ]
    if s.reference:
        terms.append(Term("reference model", local * pb, f"frozen copy (algo.kl_coef > 0), {where}", off))
    cb = compute_bytes(s.precision, pb)
    if s.strategy == "ddp" and s.world > 1:
        terms.append(Term("DDP gradient buckets", n * pb, "a flat copy of the gradients for all-reduce"))
    if s.strategy == "fsdp":
        gathered = shape.embedding_params * cb * 2 + 2 * shape.layer_params * cb + shape.layer_params * 4
        terms.append(
            Term("FSDP gathered params", gathered, "embedding/head + its grad, 2 layers, 1 layer's fp32 grad")
        )
    elif mixed(s.precision) and pb == 4:
        terms.append(Term("autocast bf16 weights", shape.linear_params * cb, "bf16 copy of every matrix"))
    if s.frozen_fraction > 0:
        qk = shape.layers * shape.hidden * (shape.q_width + shape.kv_width)
        copies = int(s.frozen_fraction * qk / shard) * pb
        terms.append(
            Term("LongAct frozen rows", copies, "copy of the masked q/k rows, restored after a step", off)
        )
    if s.engine_bytes:
        terms.append(
            Term("vLLM engine (colocated)", s.engine_bytes, "its share of the device while training")
        )
    if s.engine_host_bytes:
        terms.append(Term("vLLM engine (host)", s.engine_host_bytes, "offloaded weights / CPU engine", True))
    return terms


def runs_interleaved(s: Settings) -> bool:
    """The shared-prompt pass runs layer by layer (the sequence-parallel pass is two-pass whatever is set)."""
    return s.shared_prefix and s.interleaved and s.sequence_parallel == 1


def _passes(shape: ModelShape, s: Settings) -> dict[str, list[Term]]:
    """Transient terms of each phase of the micro-batch's log-prob pass, its backward and the step."""
    L, H, V, sp = shape.layers, shape.hidden, shape.vocab, max(1, s.sequence_parallel)
    cb = compute_bytes(s.precision, s.param_bytes)
    full = layer_bytes_per_token(shape, s.precision, s.param_bytes)
    kv = kv_bytes_per_token(shape, s.precision, s.param_bytes)
    transient = backward_transient_per_token(shape)
    ckpt = s.activation_checkpointing
    saved_per_token = 4 * H if ckpt else full  # checkpointing keeps each layer's float32 input only
    dense = s.packed_kernel == "sdpa_mask"
    packed_dense = s.shared_prefix and s.packed and dense
    if s.shared_prefix:
        prompt, completion = s.prompt_tokens / sp, s.completion_tokens / sp
        if s.packed:  # one packed row attends to [all prompts ; packed completions]
            keys = s.prompt_tokens + s.completion_tokens
            attention = completion * keys * (1 + cb) + 2 * shape.q_width * keys * cb / sp if dense else 0.0
        else:  # each row attends to [its prompt ; its completion], the prompt's K/V repeated per row
            rows = max(1, s.completion_rows)
            width = s.completion_tokens / rows
            keys = rows * (s.prompt_tokens + width)
            attention = rows * width * (s.prompt_tokens + width) * (1 + cb) / sp
            attention += 2 * shape.q_width * keys * cb / sp
    else:  # every row runs prompt + completion: no shared K/V
        prompt, completion = 0.0, (s.prompt_tokens + s.completion_tokens) / sp
        rows = max(1, s.completion_rows)
        width = (s.prompt_tokens + s.completion_tokens) / rows
        attention = rows * width * width * (1 + cb) / sp
    saved_prompt = L * prompt * saved_per_token
    saved_completion = L * completion * saved_per_token + (0 if ckpt else L * attention)
    # the dense kernel's bool mask is built whole on every rank (sequence parallelism does not split it)
    mask = s.completion_tokens * (s.prompt_tokens + s.completion_tokens) if packed_dense else 0
    # checkpointed layers keep their cache (the recorded K/V) until their backward, and the packed pass's
    # concatenated copy until the completion layer's; without checkpointing only the bf16 copies SDPA saved
    # (part of the prompt's activations) stay
    interleaved = runs_interleaved(s)
    hold = L * prompt * kv if s.shared_prefix and ckpt and not interleaved else 0.0
    copies = 2 if s.packed else 1
    head_tokens = s.completion_tokens / sp
    chunk = min(s.logprob_chunk or head_tokens, head_tokens)
    # per logit (ops/chunked.py): the matmul's output and the float32 softmax kept for the backward (which
    # turns it into the gradient in place); the forward's upcast, log-softmax and p * log p live in a few
    # rows at a time (ops/head_blocks.py)
    head = chunk * V * (4 + cb) + head_scratch_bytes(V, chunk, s.device) + 3 * head_tokens * H * 4
    # the packed pass's key gradient is a view of the [P + T] gradient; the padded one is summed over rows
    # the head's weight gradient is made whole, then added to .grad (under autocast: bf16, then float32);
    # FSDP's unsharded head gradient is in its gathered-parameter term
    head_grad = 0 if s.strategy == "fsdp" else V * H * (4 + (cb if cb == 2 and s.param_bytes == 4 else 0))
    grads_hold = L * (prompt + (completion if s.packed else 0)) * kv if s.shared_prefix else 0.0
    kept = [
        Term("prompt activations", int(saved_prompt), _saved_note(ckpt, "prompt", prompt)),
        Term("completion activations", int(saved_completion), _saved_note(ckpt, "completion", completion)),
    ]
    if mask:
        kept.append(Term("packed attention mask", int(mask), "bool [T, P + T], built once"))
    if hold:
        kept.append(Term(KV_HOLD, int(hold * copies), f"{L} layers x {prompt:.0f} tokens x {kv} B"))
    recompute_completion = completion * (full + transient) + attention
    recompute_prompt = prompt * (full + transient)
    head_phase = kept + [
        Term("LM-head chunk", int(head), f"{chunk:.0f} tokens x {V} vocab, logits"),
        *([Term("LM-head weight gradient", head_grad, "new [V, H] gradient before it is accumulated")]
          if head_grad else []),
    ]  # fmt: skip
    if interleaved:
        return {
            "head backward": head_phase,
            "layer backward": kept + _interleaved_layer(shape, s, prompt, completion, attention, copies),
            "optimizer step": [_optimizer_temp(shape, s)],
        }
    phases = {
        "head backward": head_phase,
        "completion backward": kept
        + [
            Term(
                "one layer's backward",
                int(recompute_completion if ckpt else completion * transient),
                "recomputed layer + its gradients" if ckpt else "gradient buffers",
            ),
        ],  # fmt: skip
    }
    if s.shared_prefix:
        phases["prompt backward"] = [
            kept[0],
            *([Term(KV_HOLD, int(hold), f"{L} layers x {prompt:.0f} tokens x {kv} B")] if hold else []),
            Term(KV_GRADS, int(grads_hold), "every layer's, waiting for the prompt's backward"),
            Term("one layer's backward", int(recompute_prompt if ckpt else prompt * transient),
                 "recomputed prompt layer + its gradients" if ckpt else "gradient buffers"),
        ]  # fmt: skip
    phases["optimizer step"] = [_optimizer_temp(shape, s)]
    return phases


def _interleaved_layer(
    shape: ModelShape, s: Settings, prompt: float, completion: float, attention: float, copies: int
) -> list[Term]:
    """The interleaved pass's one-layer backward: what exists besides the checkpoint inputs (top layer).

    Checkpointed: the joint checkpoint recomputes the layer's prompt and completion runs before either's
    backward (both layers' saved tensors and the completions' attention), this layer's prompt K/V (and the
    packed pass's concatenated copy) and, one run at a time, the gradient buffers. Not checkpointed: the
    gradient buffers of one run. Either way one layer's K/V gradients (prompt keys; packed: the
    ``[P + T]`` key gradient).
    """
    full = layer_bytes_per_token(shape, s.precision, s.param_bytes)
    kv = kv_bytes_per_token(shape, s.precision, s.param_bytes)
    transient = backward_transient_per_token(shape)
    buffers = max(completion, prompt) * transient
    grads = (prompt + (completion if s.packed else 0)) * kv
    if not s.activation_checkpointing:
        return [
            Term("one layer's backward", int(buffers), "gradient buffers of one run (completions or prompt)"),
            Term("one layer's K/V gradients", int(grads), "consumed before the next layer's backward"),
        ]
    return [
        Term("one layer recomputed", int((prompt + completion) * full + attention),
             "the joint checkpoint: prompt and completion runs of one layer"),
        Term("one layer's prompt K/V", int(prompt * kv * copies), "recomputed, not held"),
        Term("one layer's backward", int(buffers), "gradient buffers of one run (completions or prompt)"),
        Term("one layer's K/V gradients", int(grads), "consumed before the next layer's backward"),
    ]  # fmt: skip


def _saved_note(ckpt: bool, what: str, tokens: float) -> str:
    kept = "each layer's float32 input" if ckpt else "every saved tensor"
    return f"{tokens:.0f} {what} tokens, {kept}"


def _optimizer_temp(shape: ModelShape, s: Settings) -> Term:
    shard = s.world if s.strategy == "fsdp" else 1
    local = -(-shape.params // shard)
    off = s.strategy == "fsdp" and s.cpu_offload
    if s.optimizer == "fused":
        return Term("AdamW temporaries", 0, "fused: none", off)
    if s.optimizer == "single_tensor":
        return Term("AdamW temporaries", 2 * shape.largest_param * 4, "largest tensor, twice", off)
    return Term("AdamW temporaries", local * 4, "foreach: one float32 copy of the parameters", off)


def plan_memory(shape: ModelShape, settings: Settings) -> MemoryPlan:
    """The memory plan of one training step of ``shape`` under ``settings``.

    Raises:
        ValueError: For a strategy other than ``single``, ``ddp`` or ``fsdp`` or a world below 1.
    """
    if settings.strategy not in ("single", "ddp", "fsdp"):
        raise ValueError(f"strategy must be single, ddp or fsdp, got {settings.strategy!r}")
    if settings.packed_kernel not in PACKED_KERNELS:
        raise ValueError(f"packed_kernel must be one of {PACKED_KERNELS}, got {settings.packed_kernel!r}")
    if settings.world < 1 or settings.sequence_parallel < 1:
        raise ValueError("world and sequence_parallel must be >= 1")
    return MemoryPlan(shape, settings, _static(shape, settings), _passes(shape, settings))
