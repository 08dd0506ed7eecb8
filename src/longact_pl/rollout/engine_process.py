"""The engine process of ``rollout.placement=disaggregated``: samples version-tagged batches for one trainer.

Started by :class:`~longact_pl.rollout.async_remote.RemoteRollouts` as ``python -m
longact_pl.rollout.engine_process HOST PORT`` (the authentication key in ``LONGACT_ENGINE_KEY``). It
connects back to its trainer, receives an :class:`EngineSpec`, builds the policy's architecture, joins
the 2-member process group (``rollout/engine_link.py``) and receives the trainer's weights. Then three
threads:

* the *receiver* reads the channel: a weight push (buckets over the group) is published as the next
  version, a sample request is handed to the producer, ``close`` ends the process;
* the *producer* is :class:`~longact_pl.rollout.async_loop.AsyncRollouts`, unchanged: it starts batch ``j``
  once version ``j - max_staleness`` has arrived, loading the newest arrived weights at that boundary (and
  between the rounds of partial rollouts), and tags every token with the version that sampled it;
* the main thread sends each finished batch back in request order (or the error that stopped it).

The engine is the rollout object of the config (``rollout=hf``: HF ``generate`` on the received weights;
``rollout=vllm``: a vLLM engine of this process, into which the received weights are pushed at each
version boundary). When the trainer goes away (its end of the channel closes) the process exits.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import queue
import signal
import sys
import threading
from dataclasses import dataclass
from multiprocessing.connection import Client
from typing import Any

import torch

from longact_pl.rollout.async_loop import AsyncRollouts, AsyncSettings
from longact_pl.rollout.engine_link import ENGINE, pair_group, recv, recv_weights, send

log = logging.getLogger(__name__)

KEY_ENV = "LONGACT_ENGINE_KEY"


@dataclass
class EngineSpec:
    """What the engine process needs (pickled to it over the channel).

    Attributes:
        engine: The rollout engine object (``HFRollout``, ``VLLMRollout``, ...): its ``generate`` samples.
        tokenizer: The policy's tokenizer.
        model_class: The policy's class (built from ``config``; the weights arrive over the group).
        config: The policy's model config.
        generation_config: Its generation config (EOS ids).
        dtype: The policy's parameter dtype (fp32 master weights arrive as they are, bit for bit).
        settings: ``max_staleness`` / ``round_tokens`` (mode ``async``).
        store_port: The trainer's store (on 127.0.0.1) for the pair group.
        backend: ``gloo`` or ``nccl``.
        device: The engine's device in its own view (``cpu``, ``cuda:0``).
        threads: CPU threads of this process's torch.
        timeout_s: Collective timeout.
        keep_received: Keep the last pushed weights to answer ``state`` requests (tests).
    """

    engine: Any
    tokenizer: Any
    model_class: type
    config: Any
    generation_config: Any
    dtype: torch.dtype
    settings: AsyncSettings
    store_port: int
    backend: str = "gloo"
    device: str = "cpu"
    threads: int = 1
    timeout_s: float = 300.0
    keep_received: bool = False


class _Received:
    """Received weights in the shape ``AsyncRollouts.publish`` reads (``state_dict()``)."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self.state = state

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.state


def build_model(spec: EngineSpec) -> torch.nn.Module:
    """The policy's architecture with its config, on the engine's device (weights overwritten by the push)."""
    with torch.random.fork_rng(devices=[]):
        model = spec.model_class(spec.config)
    model.generation_config = spec.generation_config
    return model.to(device=spec.device, dtype=spec.dtype).eval()


def _shutdown_engines() -> None:
    """Stop a vLLM engine this process started (its worker processes exit with it)."""
    if "longact_pl.rollout.vllm_engine" in sys.modules:
        sys.modules["longact_pl.rollout.vllm_engine"].shutdown_engines()


def _exit(code: int, rollouts: AsyncRollouts | None = None) -> None:
    """End the process now (from any thread): the producer signalled, engines stopped."""
    if rollouts is not None:
        rollouts.close(wait_s=0)
    try:
        _shutdown_engines()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _receive(conn, group, rollouts: AsyncRollouts, spec: EngineSpec, todo: queue.Queue) -> None:
    """The receiver thread: weight pushes become versions, requests go to the producer."""
    code = 0
    try:
        while True:
            message = recv(conn)
            kind = message.get("kind")
            if kind == "bucket":
                version, state = recv_weights(conn, group, first=message, device=spec.device)
                if spec.keep_received:
                    todo.put(("state", version, state))
                rollouts.publish(_Received(state))
                del state
            elif kind == "sample":
                rollouts.submit(message["index"], message["prompts"], message["seed"])
                todo.put(("sample", message["index"], message["prompts"], message["seed"]))
            elif kind == "state":
                todo.put(("state?",))
            elif kind == "close":
                break
            else:
                raise RuntimeError(f"unknown message from the trainer: {kind!r}")
    except (EOFError, OSError):  # the trainer is gone
        log.warning("engine process: the trainer closed the channel; exiting")
    except BaseException:  # noqa: BLE001 - reported, then the process ends (the trainer sees it exit)
        log.exception("engine process: receiving from the trainer failed")
        code = 1
    _exit(code, rollouts)


def serve(conn, spec: EngineSpec) -> None:
    """Run the engine for the trainer at the other end of ``conn`` until it closes or goes away."""
    torch.set_num_threads(spec.threads)
    model = build_model(spec)
    send(conn, {"kind": "hello", "pid": os.getpid()})
    group = pair_group("127.0.0.1", spec.store_port, ENGINE, spec.backend, spec.timeout_s)
    version, state = recv_weights(conn, group, device=spec.device)
    model.load_state_dict(state, strict=True)
    rollouts = AsyncRollouts(spec.engine, spec.tokenizer, model, spec.settings, version)
    del model
    last = (version, state) if spec.keep_received else None
    del state
    if callable(getattr(spec.engine, "mark_stale", None)):  # an engine holding its own copy (vLLM)
        rollouts.sampler.register_load_state_dict_post_hook(lambda *_: spec.engine.mark_stale())
    todo: queue.Queue = queue.Queue()
    threading.Thread(
        target=_receive, args=(conn, group, rollouts, spec, todo), name="engine-receiver", daemon=True
    ).start()
    send(conn, {"kind": "ready", "version": version})
    # results go back in index order (the producer's): a batch requested ahead (k + 1, before k) may wait
    # for the version that training batch k publishes, so it is not waited for before k
    requests: dict[int, tuple] = {}
    expected = version
    while True:
        item = todo.get()
        if item[0] == "state":  # tests: the last pushed weights, as they arrived
            last = item[1:]
        elif item[0] == "state?":
            send(conn, {"kind": "state", "version": last[0], "state": last[1]} if last else {"kind": "state"})
        else:
            requests[item[1]] = item[2:]
        while expected in requests:
            index, (prompts, seed) = expected, requests.pop(expected)
            expected += 1
            try:
                result = rollouts.take(index, prompts, seed)
            except BaseException as err:  # noqa: BLE001 - the trainer stops the run with it
                cause = err.__cause__ or err
                send(conn, {"kind": "error", "index": index, "error": f"{type(cause).__name__}: {cause}"})
                continue
            send(conn, {"kind": "rollout", "result": result})


def main(argv: list[str]) -> None:
    """``engine_process HOST PORT``: connect to the trainer, then :func:`serve` it."""
    logging.basicConfig(level=logging.INFO, format="[engine %(process)d] %(levelname)s %(message)s")
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints every thread's stack (a hang)
    key = bytes.fromhex(os.environ.pop(KEY_ENV))
    conn = Client((argv[0], int(argv[1])), authkey=key)
    try:
        spec: EngineSpec = recv(conn)
        serve(conn, spec)
    except (EOFError, OSError):
        _exit(0)
    except BaseException as err:
        log.exception("engine process failed")
        with contextlib.suppress(OSError):
            send(conn, {"kind": "error", "index": None, "error": f"{type(err).__name__}: {err}"})
        _exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
