"""Sequence parallelism in the training stack: bad settings are refused early; DP x SP equals DP alone."""

from __future__ import annotations

import re

import pytest

from longact_pl.train import run
from tests.helpers import compose_train

SP = "trainer.strategy.sequence_parallel_size"


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["strategy=fsdp", "trainer.devices=3", f"{SP}=2"], f"{SP}=2 must divide the world size (3"),
        (
            ["strategy=fsdp", "trainer.devices=3", f"{SP}=3"],
            f"{SP}=3 must divide the number of attention heads (4)",
        ),
        (["strategy=ddp", "trainer.devices=2", f"{SP}=2"], f"{SP}=2 needs strategy=fsdp"),
        (["strategy=fsdp", f"{SP}=0"], f"{SP} must be >= 1"),
    ],
    ids=["world", "heads", "ddp", "zero"],
)
def test_bad_sequence_parallel_settings_fail_before_anything_is_written(tmp_path, overrides, expected):
    cfg = compose_train(tmp_path, "trainer.accelerator=cpu", *overrides)
    with pytest.raises(Exception, match=re.escape(expected)):  # Hydra wraps errors of constructors
        run(cfg, tmp_path)
    assert list(tmp_path.iterdir()) == []
