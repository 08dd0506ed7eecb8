"""The training step's async side: the lookahead over the training loader, and the module's declared hook."""

from longact_pl.rollout.async_hook import AsyncStep, Lookahead
from longact_pl.rollout.async_loop import AsyncSettings


def _batches(n: int) -> list[list[dict]]:
    return [[{"prompt_ids": [k, k + 1]}] for k in range(n)]


def test_the_lookahead_tells_the_next_batches_up_to_its_depth_and_stops_at_the_epochs_end():
    epoch = _batches(5)
    passes = []

    def loader():
        passes.append(1)
        return iter(epoch)

    ahead = Lookahead(loader)
    assert ahead.ahead(epoch[0], 2) == epoch[1:3]
    assert ahead.ahead(epoch[1], 2) == epoch[2:4]  # one more read, no new pass
    assert ahead.ahead(epoch[2], 3) == epoch[3:5]  # deeper than what is left: the epoch's end
    assert ahead.ahead(epoch[3], 2) == epoch[4:5]
    assert ahead.ahead(epoch[4], 2) == []
    assert len(passes) == 1
    assert ahead.ahead(epoch[0], 1) == epoch[1:2]  # a new epoch: realigned on a fresh pass
    assert ahead.ahead(epoch[3], 1) == epoch[4:5]  # a resume mid-epoch: realigned too
    assert len(passes) == 3
    assert ahead.ahead([{"prompt_ids": [99]}], 2) == []  # a batch the loader does not hold: none told
    assert ahead.after(epoch[1]) == epoch[2]


def test_sync_mode_hands_the_rollout_engine_and_publishes_nothing():
    step = AsyncStep(AsyncSettings("sync"), seed=0)
    engine = object()
    assert not step.is_async and step.depth == 0
    assert step.engine(engine, [], policy=None, tokenizer=None, step=0, trainer=None) is engine
    step.after_step(policy=None, logs={})  # no producer: nothing to publish
    step.close()
    assert AsyncStep(None, seed=0).engine(engine, [], None, None, 0, None) is engine


def test_the_lookahead_depth_is_the_staleness_bound():
    assert AsyncStep(AsyncSettings("async", 3), seed=0).depth == 3
    assert AsyncStep(AsyncSettings("async", 0), seed=0).depth == 1  # sampled as soon as its version exists
