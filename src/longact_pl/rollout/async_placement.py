"""Which ``rollout.mode=async`` placements an engine can run in (pure; checked from the config alone).

* ``colocated`` (a sampler copy in a thread of the trainer's process) needs an engine that samples *with*
  the copy it is given (HF ``generate``). An engine holding its own copy of the weights (vLLM: ``external``)
  is refused there: its weights would be pushed from the sampler copy (a third copy of the model), the
  validation pass on the main thread would push the trainer's weights into the same engine while the
  producer thread samples a batch with it (a batch mixing versions), and sleeping between rollouts would
  hand the engine's memory to a training step that runs *during* the next rollout.
* ``disaggregated`` (an engine process per trainer rank, ``rollout/async_remote.py``) runs either; with
  vLLM in this version: no partial rollouts (``round_tokens``: the rounds would continue on a copy of the
  engine that misses the pushes between rounds), no sleep (nothing else uses the engine's memory), and one
  GPU per engine (``tensor_parallel_size`` 1: TP workers of an engine process are not placed yet).
"""

from __future__ import annotations

from hydra.utils import get_object


def check_async_placement(
    target: str,
    placement: str,
    engine_device: str | None,
    round_tokens: int | None,
    sleep_level: int | None,
    tensor_parallel_size: int | None,
) -> None:
    """Refuse what ``rollout.mode=async`` cannot run with ``placement`` and this engine.

    Args:
        target: The rollout engine's ``_target_``.
        placement: ``rollout.placement``.
        engine_device: ``rollout.engine_device``.
        round_tokens: ``rollout.round_tokens``.
        sleep_level: ``rollout.sleep_level`` (vLLM; ``None`` elsewhere).
        tensor_parallel_size: ``rollout.engine_kwargs.tensor_parallel_size``.

    Raises:
        ValueError: Naming the field and the fix.
    """
    try:
        external = bool(getattr(get_object(target), "external", False))
    except Exception:  # noqa: BLE001 - Hydra reports an unknown _target_ itself when it builds the node
        return
    name = target.rpartition(".")[2]
    if placement == "colocated":
        if engine_device is not None:
            raise ValueError(
                f"rollout.engine_device={engine_device} places a disaggregated engine; with "
                "rollout.placement=colocated the sampler runs on the trainer's device: set "
                "rollout.placement=disaggregated or rollout.engine_device=null"
            )
        if external:
            raise ValueError(
                f"rollout.mode=async with rollout={name} (an engine holding its own copy of the weights) "
                "runs in its own process only: set rollout.placement=disaggregated (colocated, the "
                "validation pass would push the trainer's weights into the engine while the sampler thread "
                "uses it; docs/async.md)"
            )
        return
    if engine_device is not None and engine_device != "cpu":
        kind, _, index = str(engine_device).partition(":")
        if kind != "cuda" or not index.isdigit():
            raise ValueError(f"rollout.engine_device must be null, cpu or cuda:N, got {engine_device!r}")
    if not external:
        return
    if round_tokens is not None:
        raise ValueError(
            f"rollout.round_tokens={round_tokens} (partial rollouts) is not available with rollout={name} in "
            "an engine process yet: set rollout.round_tokens=null or rollout=hf"
        )
    if sleep_level:
        raise ValueError(
            f"rollout.sleep_level={sleep_level} with rollout.mode=async: the engine samples while the "
            "trainer trains, so there is no idle phase to sleep in (and a disaggregated engine's memory is "
            "its own): set rollout.sleep_level=0"
        )
    if (tensor_parallel_size or 1) > 1:
        raise ValueError(
            f"rollout.engine_kwargs.tensor_parallel_size={tensor_parallel_size} is not available for a "
            "disaggregated engine yet (one device per engine process): set it to 1, or rollout.mode=sync"
        )
