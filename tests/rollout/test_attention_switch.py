"""The attention switch restores the model's attention and the cache variable, also when the block fails."""

from contextvars import ContextVar

import pytest

from longact_pl.models.tiny import tiny_llama
from longact_pl.rollout.attention_switch import attention_switched


def test_the_switch_is_undone_after_the_block_and_after_an_error():
    model = tiny_llama(seed=0).model
    before = model.config._attn_implementation
    active: ContextVar[object | None] = ContextVar("test_cache", default=None)
    cache = object()
    with attention_switched(model, "longact_shared_decode", active, cache):
        assert model.config._attn_implementation == "longact_shared_decode" and active.get() is cache
    assert model.config._attn_implementation == before and active.get() is None
    with pytest.raises(RuntimeError), attention_switched(model, "longact_shared_decode", active, cache):
        raise RuntimeError("a failing forward")
    assert model.config._attn_implementation == before and active.get() is None
