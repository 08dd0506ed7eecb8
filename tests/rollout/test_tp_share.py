"""The ranks of a TP group share their leader's engine: each rank gets exactly the samples it would get alone.

A stand-in engine samples deterministically from each call (prompt, seed, settings), as a seeded engine
does; the gloo tests run 4 CPU processes in two TP groups of 2 (``tp_share_group``'s real subgroups), and 2
FSDP2 processes through ``VLLMRollout.generate`` with an engine stand-in that loads the pushed weights file.
"""

from __future__ import annotations

import os
from datetime import timedelta
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from longact_pl.group_exit import close_process_group
from longact_pl.rollout.tp_share import (
    Call,
    Sample,
    SoloGroup,
    merge,
    shared_generate,
    split,
    tp_share_group,
)


def fake_samples(call: Call) -> list[Sample]:
    """``call.n`` samples that depend on the call alone: lengths 1..max_tokens, a stop id now and then."""
    base = call.seed * 31 + sum(call.prompt) * 7 + len(call.prompt)
    out = []
    for i in range(call.n):
        length = 1 + (base + 3 * i) % call.max_tokens
        tokens = tuple((base + 11 * i + 5 * k) % 50 + 3 for k in range(length))
        if (base + i) % 3 == 0:
            tokens = tokens[:-1] + (call.stop_ids[0],)
        out.append(Sample(tokens, tuple(-0.01 * t - 0.001 * i for t in tokens)))
    return out


class FakeSide:
    """A stand-in engine and trainer side recording what each rank did."""

    def __init__(self, fail_run: bool = False) -> None:
        self.events: list[str] = []
        self.runs: list[list[Call]] = []
        self.need_push = True
        self.fail_run = fail_run

    def release(self) -> None:
        self.events.append("release")

    def open(self) -> bool:
        self.events.append("open")
        need, self.need_push = self.need_push, False  # pushed once: the next rollout needs none
        return need

    def push(self, lead: bool) -> None:
        self.events.append("push_lead" if lead else "push_follow")

    def run(self, calls: list[Call]) -> list[list[Sample]]:
        self.events.append("run")
        self.runs.append(calls)
        if self.fail_run:
            raise ValueError("engine exploded")
        return [fake_samples(c) for c in calls]

    def close(self) -> None:
        self.events.append("close")


def _calls(prompts: list[list[int]], seed: int = 5, n: int = 3) -> list[Call]:
    return [Call(tuple(p), seed + sum(p), n, False, 6, (2,)) for p in prompts]


# ------------------------------------------------------------------------------------------- one process
def test_merge_runs_equal_calls_once_and_split_restores_each_members_order():
    a, b, c = _calls([[1, 2], [3], [4, 5, 6]])
    calls, where = merge([[a, b], [c, a], []])
    assert calls == [a, b, c] and where == [[0, 1], [2, 0], []]
    results = [fake_samples(x) for x in calls]
    assert split(results, where) == [[results[0], results[1]], [results[2], results[0]], []]


def test_solo_group_is_the_engine_alone():
    side = FakeSide()
    calls = _calls([[1, 2], [3], [1, 2]])
    assert shared_generate(SoloGroup(), calls, side) == [fake_samples(c) for c in calls]
    assert side.events == ["release", "open", "push_lead", "run", "close"]
    assert len(side.runs[0]) == 2  # the repeated prompt ran once


def test_an_engine_returning_too_few_samples_fails():
    class Short(FakeSide):
        def run(self, calls):
            return [fake_samples(c)[:-1] for c in calls]

    side = Short()
    with pytest.raises(RuntimeError, match=r"returned \[2\] samples for calls asking \[3\]"):
        shared_generate(SoloGroup(), _calls([[1]]), side)
    assert side.events[-1] == "close"  # the engine still goes to sleep


def test_one_rank_per_engine_needs_no_group():
    assert isinstance(tp_share_group(2, 2), SoloGroup)  # no process group: a single process
    assert isinstance(tp_share_group(1, 8), SoloGroup)


@pytest.mark.parametrize(
    "devices,nodes,tp,error",
    [(4, 2, 2, None), (1, 1, 2, None), (8, 1, 8, None),
     (4, 2, 3, r"tensor_parallel_size=3 must divide the ranks per node \(4\)"),
     (2, 1, 4, r"=4 must divide the ranks per node \(2\)"), (1, 1, 0, "must be >= 1")],
)  # fmt: skip
def test_tp_groups_that_do_not_tile_the_nodes_are_refused_from_the_config(devices, nodes, tp, error):
    """Before anything is built: a TP group must fit in a node's ranks (one process may use any TP size)."""
    from omegaconf import OmegaConf

    from longact_pl.config_check import check_combinations

    cfg = OmegaConf.create(
        {
            "trainer": {"devices": devices, "num_nodes": nodes},
            "rollout": {"engine_kwargs": {"tensor_parallel_size": tp}},
        }
    )
    if error is None:
        check_combinations(cfg)
    else:
        with pytest.raises(ValueError, match=error):
            check_combinations(cfg)


# ------------------------------------------------------------------------------- 4 gloo ranks, 2 groups
WORLD = 4


def _rank_prompts(rank: int) -> list[list[int]]:
    """Each rank's own prompts, plus one prompt that the two ranks of each group both hold."""
    own = [[10 + rank, 20 + rank, 30], [40 + rank] * (rank + 1)]
    return own + [[7, 7, 7 + rank // 2]]


def _init(rank: int, world: int, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )


def _group_worker(rank: int, init_file: str, out: str) -> None:
    _init(rank, WORLD, init_file)
    try:
        group = tp_share_group(2, 4)
        side = FakeSide()
        got, alone = [], []
        for seed in (1, 2):  # two rollouts: the first pushes, the second does not
            calls = _calls(_rank_prompts(rank), seed)
            got.append(shared_generate(group, calls, side))
            alone.append([fake_samples(c) for c in calls])  # what this rank's own engine would return
        # the leader's engine fails: every rank of its group raises, none waits
        failing = FakeSide(fail_run=True)
        failing.need_push = False
        try:
            shared_generate(group, _calls(_rank_prompts(rank)), failing)
            error = None
        except Exception as err:  # noqa: BLE001 - recorded for the test
            error = f"{type(err).__name__}: {err}"
        record = {"ranks": group.ranks, "got": got, "alone": alone, "events": side.events, "runs": side.runs}
        torch.save({**record, "error": error}, f"{out}{rank}.pt")
    finally:
        close_process_group()  # settles gloo threads: no abort at exit


@pytest.mark.slow  # 4 spawned processes: ~5 s of CPU, more wall time on a busy machine
def test_each_rank_gets_what_its_own_engine_would_give(tmp_path):
    out = str(tmp_path / "rank")
    mp.spawn(_group_worker, args=(str(tmp_path / "init"), out), nprocs=WORLD, join=True)
    ranks = [torch.load(f"{out}{r}.pt", weights_only=False) for r in range(WORLD)]
    assert [r["ranks"] for r in ranks] == [(0, 1), (0, 1), (2, 3), (2, 3)]
    for r in ranks:
        assert r["got"] == r["alone"]  # same seeds, same samples, in the rank's own prompt order
    leader, member = ranks[0], ranks[1]
    assert leader["events"] == ["release", "open", "push_lead", "run", "close"] + [
        "release", "open", "run", "close"
    ]  # fmt: skip
    assert member["events"] == ["release", "push_follow", "release"]  # no engine of its own
    # one engine call per rollout for the whole group, the prompt both ranks hold once: 2 + 2 + 1
    assert [len(calls) for calls in leader["runs"]] == [5, 5]
    group_prompts = {c.prompt for c in _calls(_rank_prompts(0)) + _calls(_rank_prompts(1))}
    assert {c.prompt for c in leader["runs"][0]} == group_prompts
    assert ranks[2]["runs"][0] != leader["runs"][0]  # the other group's leader ran its own group's prompts
    assert ranks[0]["error"] == ranks[2]["error"] == "ValueError: engine exploded"  # the leaders' own
    for r in (ranks[1], ranks[3]):
        assert r["error"].startswith(
            "RuntimeError: the rollout engine of this rank's TP group (its leader) failed"
        )
        assert r["error"].endswith("ValueError: engine exploded")


# ---------------------------------------------------------------- VLLMRollout, FSDP2 over 2 gloo ranks
class _Output:
    def __init__(self, index: int, sample: Sample) -> None:
        self.index, self.token_ids = index, list(sample.token_ids)
        pairs = zip(sample.token_ids, sample.logprobs)
        self.logprobs = [{t: SimpleNamespace(logprob=lp)} for t, lp in pairs]


class FakeLLM:
    """``vllm.LLM`` stand-in: loads pushed weight files; samples like :func:`fake_samples`, offset by the
    sum of the weights it holds (a rollout before a push, or from other weights, shows)."""

    def __init__(self) -> None:
        self.weights: dict[str, torch.Tensor] = {}
        self.prompts_per_call: list[int] = []

    def collective_rpc(self, method: str, args=()):
        from safetensors.torch import load_file

        assert method == "load_weights_file"
        self.weights = load_file(args[0])

    def reset_prefix_cache(self) -> None:
        pass

    def generate(self, prompts, params, use_tqdm=False):
        self.prompts_per_call.append(len(prompts))
        offset = float(sum(t.double().sum() for t in self.weights.values()))
        outs = []
        for p, sp in zip(prompts, params):
            call = Call(tuple(p["prompt_token_ids"]), sp.seed, sp.n, sp.greedy, sp.max_tokens, tuple(sp.stop))
            samples = [
                Sample(s.token_ids, tuple(lp + offset for lp in s.logprobs)) for s in fake_samples(call)
            ]
            shuffled = [_Output(i, s) for i, s in reversed(list(enumerate(samples)))]  # sorted by index later
            outs.append(SimpleNamespace(outputs=shuffled))
        return outs


def _fsdp_worker(rank: int, init_file: str, out: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    import longact_pl.rollout.vllm as vllm_rollout
    from longact_pl.models.tiny import tiny_llama
    from longact_pl.rollout.vllm_engine import Engine

    _init(rank, 2, init_file)
    os.environ["LOCAL_WORLD_SIZE"] = "2"
    try:
        tiny = tiny_llama(seed=0)
        policy, tok = tiny.model, tiny.tokenizer
        stepped = {n: p.detach() + 0.5 for n, p in policy.named_parameters()}  # tied weights once
        from longact_pl.strategies import shard_model

        shard_model(policy, init_device_mesh("cpu", (2,)))
        engines: list[Engine] = []

        def engine_for(model, engine_args, sleep_level=0):
            if not engines:
                engines.append(Engine(llm=FakeLLM(), folder=None))
            return engines[0]

        def params(self, n, greedy, seed, budget, eos_ids):
            return SimpleNamespace(n=n, greedy=greedy, seed=seed, max_tokens=budget, stop=eos_ids)

        vllm_rollout.engine_for = engine_for
        vllm_rollout.VLLMRollout._params = params
        args = {"group_size": 2, "max_new_tokens": 5, "dtype": "float32", "weight_sync": "file"}
        shared = vllm_rollout.VLLMRollout(**args, engine_kwargs={"tensor_parallel_size": 2})
        prompts = [[5 + rank, 6, 7], [9] * (2 + rank)]
        first = shared.generate(policy, tok, prompts, seed=3)
        shared.mark_stale()
        with torch.no_grad():
            for p in policy.parameters():
                p.add_(0.5)  # an optimizer step: the next rollout pushes again
        second = shared.generate(policy, tok, prompts, seed=4)
        record = {
            "ranks": shared.share_group.ranks,
            "batches": [first, second],
            "syncs": shared.syncs,
            "engine": bool(engines),
            "prompts_per_call": engines[0].llm.prompts_per_call if engines else [],
            "weights": engines[0].llm.weights if engines else {},
            "stepped": stepped,
        }
        # each rank alone, with its own engine holding the same (pushed) weights: the same batches
        engines.clear()
        alone = vllm_rollout.VLLMRollout(**args)
        alone.share_group = SoloGroup()
        record["alone"] = alone.generate(policy, tok, prompts, seed=4)
        torch.save(record, f"{out}{rank}.pt")
    finally:
        close_process_group()  # settles gloo threads: no abort at exit


@pytest.mark.slow  # 2 spawned processes building and sharding a tiny model
def test_vllm_rollout_shares_its_leaders_engine_under_fsdp(tmp_path):
    """The leader pushes the gathered weights (the other rank joins the gathers) and samples for both."""
    out = str(tmp_path / "rank")
    mp.spawn(_fsdp_worker, args=(str(tmp_path / "init"), out), nprocs=2, join=True)
    ranks = [torch.load(f"{out}{r}.pt", weights_only=False) for r in range(2)]
    leader, member = ranks
    assert leader["ranks"] == member["ranks"] == (0, 1)
    assert leader["engine"] and not member["engine"]  # only the leader started an engine
    assert leader["syncs"] == member["syncs"] == 2
    assert leader["prompts_per_call"] == [4, 4]  # both ranks' prompts in one engine call per rollout
    # the engine holds the full weights gathered from the FSDP shards (after the +0.5 step)
    assert leader["weights"].keys() == leader["stepped"].keys()
    for name, value in leader["stepped"].items():
        assert torch.equal(leader["weights"][name], value), name
    for r in ranks:
        first, second = r["batches"]
        assert first.input_ids.shape[0] == 4 and not torch.equal(first.behaviour_logp, second.behaviour_logp)
        for field in ("input_ids", "attention_mask", "completion_mask", "behaviour_logp"):
            assert torch.equal(getattr(second, field), getattr(r["alone"], field)), field
        assert second.completions == r["alone"].completions
        assert second.completion_mask.sum(-1).unique().numel() > 1  # varied lengths and stops
