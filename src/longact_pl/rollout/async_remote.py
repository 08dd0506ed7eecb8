"""``rollout.placement=disaggregated``: the trainer's side of an engine running in its own process.

:class:`RemoteRollouts` has the interface of :class:`~longact_pl.rollout.async_loop.AsyncRollouts`
(``submit`` / ``take`` / ``publish`` / ``close`` / ``version``), so the training step drives it the same
way; the sampling happens in an engine process (``rollout/engine_process.py``) this object starts, one per
trainer rank, on the device ``rollout.engine_device`` names. After every RL step :meth:`publish` pushes the
policy's weights to it over a 2-member process group (gloo on CPU, NCCL when the engine is on a GPU) in
buckets of ``bucket_mb``; the engine loads them at its next version boundary (batch ``j`` waits for
version ``j - max_staleness``). :meth:`take` checks the lag again on the trainer's own version count.

Failures: an engine process that exits, fails a batch or drops the channel makes the next :meth:`take`
raise :class:`~longact_pl.rollout.async_loop.EngineFailure` (the step that needed the batch then writes a
resumable checkpoint before applying anything, as with the colocated sampler). A push to a dead engine is
not an error by itself: it is recorded and reported by that next :meth:`take`.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import weakref
from multiprocessing.connection import Listener

import torch
import torch.distributed as dist
from torch import nn

from longact_pl.rollout.async_buffer import VersionedRollout, check_lag
from longact_pl.rollout.async_loop import AsyncSettings, EngineFailure
from longact_pl.rollout.engine_link import TRAINER, make_group, recv, send, send_weights
from longact_pl.rollout.engine_process import KEY_ENV, EngineSpec
from longact_pl.rollout.weight_push import iter_weights, largest_tensor_bytes

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
POLL_S = 0.5  # how often a wait for the engine checks that its process is alive
BUCKET_MB = 256.0  # weight-push bucket when the engine has no bucket_mb of its own (rollout=hf)
# the trainer's distributed environment: the engine process is alone in its own world
DIST_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK",
            "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")  # fmt: skip


def engine_device(setting: str | None) -> tuple[str | None, str]:
    """``(CUDA_VISIBLE_DEVICES of the engine or None, its device in its own view)`` of ``engine_device``.

    ``null``: the CPU without CUDA; with CUDA the first GPU after this node's trainer ranks
    (``LOCAL_RANK + LOCAL_WORLD_SIZE``: trainer ranks on GPUs 0..n-1, their engines on n..2n-1).

    Raises:
        ValueError: An unknown value, or a GPU this node does not have.
    """
    if setting is None:
        if not torch.cuda.is_available():
            return None, "cpu"
        local = int(os.environ.get("LOCAL_RANK", 0))
        setting = f"cuda:{local + int(os.environ.get('LOCAL_WORLD_SIZE', 1))}"
    if setting == "cpu":
        return None, "cpu"
    kind, _, index = setting.partition(":")
    if kind != "cuda" or not index.isdigit():
        raise ValueError(f"rollout.engine_device must be null, cpu or cuda:N, got {setting!r}")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if int(index) >= gpus:
        raise ValueError(
            f"rollout.engine_device={setting}: this node has {gpus} GPU(s); the engine needs one the trainer "
            "does not use (train on fewer GPUs: trainer.devices), or set rollout.engine_device=cpu"
        )
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    physical = visible.split(",")[int(index)] if visible else index
    return physical, "cuda:0"


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """``{name: first name}`` of the state-dict entries that are the same tensor as an earlier one."""
    first: dict[int, str] = {}
    aliases = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in first:
            aliases[name] = first[id(t)]
        else:
            first[id(t)] = name
    return aliases


def _model_class(policy: nn.Module) -> type:
    from torch.distributed.fsdp import FSDPModule

    return next(c for c in type(policy).__mro__ if not issubclass(c, FSDPModule))


def _stop(process: subprocess.Popen, wait_s: float) -> None:
    """Wait ``wait_s`` for ``process`` to end, then kill its whole session (a vLLM engine's workers too)."""
    try:
        process.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


class RemoteRollouts:
    """Version-tagged batches from an engine in its own process (see the module docstring).

    Args:
        engine: The rollout engine object; pickled to the engine process, whose copy samples.
        tokenizer: The policy's tokenizer.
        policy: The policy at start (version ``start_version``); its weights are the first push.
        settings: ``max_staleness``, ``round_tokens`` and ``engine_device``.
        start_version: The version of ``policy`` now.
        timeout_s: How long a start or a collective may wait for the engine.
        keep_received: The engine keeps the last pushed weights for :meth:`engine_state` (tests).
    """

    def __init__(
        self,
        engine,
        tokenizer,
        policy: nn.Module,
        settings: AsyncSettings,
        start_version: int = 0,
        timeout_s: float = 300.0,
        keep_received: bool = False,
    ) -> None:
        self.engine, self.settings, self.timeout_s = engine, settings, timeout_s
        self._published = start_version
        self._next_take = start_version  # batches are taken in index order, the first at start_version
        self._submitted: dict[int, list[list[int]]] = {}
        self._results: dict[int, VersionedRollout | BaseException] = {}
        self._failure: BaseException | None = None
        self._closed = False
        self.busy_s = 0.0  # engine seconds spent generating the batches taken so far
        visible, device = engine_device(settings.engine_device)
        self.backend = "nccl" if device.startswith("cuda") else "gloo"
        self._push_device = torch.device("cuda", torch.cuda.current_device()) if visible else "cpu"
        self.bucket_bytes = int(getattr(engine, "bucket_bytes", BUCKET_MB * 2**20))
        key = secrets.token_bytes(32)
        timeout = datetime.timedelta(seconds=timeout_s)
        store = dist.TCPStore(HOST, 0, 2, is_master=True, wait_for_workers=False, timeout=timeout)
        with Listener((HOST, 0), authkey=key) as listener:
            env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
            env[KEY_ENV] = key.hex()
            if visible is not None:
                env["CUDA_VISIBLE_DEVICES"] = visible
            cmd = [sys.executable, "-m", "longact_pl.rollout.engine_process", HOST, str(listener.address[1])]
            self.process = subprocess.Popen(cmd, env=env, start_new_session=True)
            self._finalizer = weakref.finalize(self, _stop, self.process, 0)  # never outlives the trainer
            self.conn = self._accept(listener)
        spec = EngineSpec(
            engine=engine, tokenizer=tokenizer, model_class=_model_class(policy), config=policy.config,
            generation_config=getattr(policy, "generation_config", None),
            dtype=next(p.dtype for p in policy.parameters() if p.is_floating_point()), settings=settings,
            store_port=store.port, backend=self.backend, device=device, threads=torch.get_num_threads(),
            timeout_s=timeout_s, keep_received=keep_received,
        )  # fmt: skip
        send(self.conn, spec)
        self._expect("hello", "starting")
        self.group = make_group(dist.PrefixStore("longact-engine", store), TRAINER, self.backend, timeout_s)
        self._store = store
        self.aliases = tied_aliases(policy)
        self._push(policy, start_version)
        self._expect("ready", "loading the first weights")

    # ------------------------------------------------------------------ trainer side
    @property
    def version(self) -> int:
        """The newest published version."""
        return self._published

    @property
    def pid(self) -> int:
        """The engine process's id."""
        return self.process.pid

    def publish(self, policy: nn.Module) -> int:
        """Push ``policy``'s weights to the engine as the next version; returns it.

        A dead engine is recorded (the next :meth:`take` raises), not raised here: the step is applied.
        """
        self._published += 1
        if self._failure is None:
            try:
                self._check_alive()
                self._push(policy, self._published)
            except Exception as err:  # noqa: BLE001 - reported by the next take, before that step applies
                self._failure = err
        return self._published

    def submit(self, index: int, prompts: list[list[int]], seed: int) -> None:
        """Request batch ``index`` (trained at version ``index``) of ``prompts``, sampled with ``seed``."""
        if index in self._submitted:
            return
        self._submitted[index] = [list(p) for p in prompts]
        if self._failure is None:
            try:
                send(self.conn, {"kind": "sample", "index": index, "prompts": self._submitted[index],
                                 "seed": seed})  # fmt: skip
            except OSError as err:
                self._failure = err

    def take(self, index: int, prompts: list[list[int]], seed: int) -> VersionedRollout:
        """Batch ``index``, waiting for the engine (requesting it first when nobody did); lag checked.

        Raises:
            EngineFailure: The engine process died, failed this batch, or a push to it failed.
            RuntimeError: ``prompts`` differ from the request, or ``index`` is not the next batch.
            StalenessError: A token lags more than ``max_staleness`` versions.
        """
        if index != self._next_take:
            raise RuntimeError(
                f"batch {index} taken out of order: the engine samples batch {self._next_take} next"
            )
        self.submit(index, prompts, seed)
        if self._submitted[index] != [list(p) for p in prompts]:
            raise RuntimeError(f"batch {index} was requested with other prompts than the step trains on")
        while index not in self._results:
            if self._failure is not None:
                raise EngineFailure(
                    f"the engine process (pid {self.pid}) failed before batch {index} "
                    f"({type(self._failure).__name__}: {self._failure}); nothing of this step was applied"
                ) from self._failure
            try:
                message = self._recv(f"sampling batch {index}")
            except RuntimeError as err:
                self._failure = err
                continue
            if message["kind"] == "rollout":
                self._results[message["result"].index] = message["result"]
            elif message["kind"] == "error" and message["index"] is None:
                self._failure = RuntimeError(message["error"])
            elif message["kind"] == "error":
                self._results[message["index"]] = RuntimeError(message["error"])
        result = self._results.pop(index)
        del self._submitted[index]
        self._next_take += 1
        if isinstance(result, BaseException):
            raise EngineFailure(
                f"the rollout engine failed while sampling batch {index} ({result}); nothing of this step "
                "was applied"
            ) from result
        self.busy_s += result.generate_s
        check_lag(result, self._published, self.settings.max_staleness)
        return result

    def engine_state(self) -> tuple[int, dict[str, torch.Tensor]]:
        """``(version, weights)`` of the last push as the engine received it (needs ``keep_received``)."""
        send(self.conn, {"kind": "state"})
        message = self._expect("state", "reporting its weights")
        return message["version"], message["state"]

    def close(self, wait_s: float = 60.0) -> None:
        """Stop the engine process (a batch being sampled is dropped); it is killed if it does not exit.

        Args:
            wait_s: How long to wait for it to exit by itself (at least 5 s).
        """
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            send(self.conn, {"kind": "close"})
        _stop(self.process, max(wait_s, 5.0))
        self._finalizer.detach()
        self.conn.close()
        self.group = None

    # ------------------------------------------------------------------ internals
    def _accept(self, listener: Listener):
        box: list = []
        thread = threading.Thread(target=lambda: box.append(listener.accept()), daemon=True)
        thread.start()
        waited = 0.0
        while thread.is_alive():
            thread.join(POLL_S)
            waited += POLL_S
            if self.process.poll() is not None or waited > self.timeout_s:
                self.close(0)
                raise EngineFailure(
                    f"the engine process did not connect (exit code {self.process.poll()}): see its output "
                    "above"
                )
        return box[0]

    def _push(self, policy: nn.Module, version: int) -> None:
        send_weights(
            self.conn, self.group, iter_weights(policy), version, self.bucket_bytes,
            largest_tensor_bytes(policy, None), self.aliases, None, self._push_device,
        )  # fmt: skip

    def _check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise RuntimeError(f"the engine process (pid {self.pid}) exited with code {code}")

    def _recv(self, doing: str) -> dict:
        """The next message from the engine, checking it is alive while waiting.

        Raises:
            RuntimeError: It exited or closed the channel.
        """
        try:
            while not self.conn.poll(POLL_S):
                code = self.process.poll()
                if code is not None and not self.conn.poll(0):
                    raise RuntimeError(
                        f"the engine process (pid {self.pid}) exited with code {code} while {doing}"
                    )
            return recv(self.conn)
        except (EOFError, OSError) as err:
            with contextlib.suppress(subprocess.TimeoutExpired):  # the channel closes just before the exit
                self.process.wait(timeout=5)
            code = self.process.poll()
            raise RuntimeError(
                f"the engine process (pid {self.pid}) ended (exit code {code}) while {doing}"
            ) from err

    def _expect(self, kind: str, doing: str) -> dict:
        try:
            message = self._recv(doing)
        except RuntimeError as err:
            self.close(0)
            raise EngineFailure(str(err)) from err
        if message["kind"] == "error":
            self.close(0)
            raise EngineFailure(f"the engine process failed while {doing}: {message['error']}")
        if message["kind"] != kind:
            raise RuntimeError(f"expected {kind!r} from the engine process, got {message['kind']!r}")
        return message
