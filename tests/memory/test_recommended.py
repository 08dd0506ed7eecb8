"""``memory.advice.recommended``: the settings a run should use on the ranks it has (what gpu_check runs)."""

from dataclasses import replace

import pytest

from longact_pl.memory.advice import recommended
from longact_pl.memory.plan import GIB, Settings, plan_memory
from longact_pl.memory.shapes import QWEN3_4B, QWEN3_8B, ModelShape

QWEN4 = ModelShape.from_config(QWEN3_4B)


def _group(prompt: int, **kw) -> Settings:
    return Settings(prompt_tokens=prompt, completion_tokens=8 * 1024, completion_rows=8, optimizer="fused",
                    frozen_fraction=0.7, **kw)  # fmt: skip


def test_a_run_that_fits_keeps_its_settings():
    s = _group(8192)
    rec = recommended(QWEN4, s, 200 * GIB, 8192, 1024)
    assert rec.settings == s and rec.overrides == "" and rec.peak == plan_memory(QWEN4, s).peak


def test_one_gpu_4b_at_32k_offloads_over_one_rank():
    """As configured over 70 GiB (104.1 when written); under 70 GiB the plan's pick is FSDP over the one rank
    with CPU offload, everything else kept."""
    s = _group(32768)
    assert plan_memory(QWEN4, s).peak > 70 * GIB
    rec = recommended(QWEN4, s, 70 * GIB, 32768, 1024)
    assert rec.settings == replace(s, strategy="fsdp", cpu_offload=True)
    assert rec.overrides == "strategy=fsdp trainer.strategy.cpu_offload=true"
    plan = plan_memory(QWEN4, rec.settings)
    assert rec.peak == plan.peak <= 70 * GIB and rec.phase == plan.peak_phase
    assert rec.describe().startswith("fsdp x1 + cpu_offload, checkpointing, chunk 1024")


def test_never_more_ranks_than_the_run_has():
    """8 FSDP ranks, Qwen3-8B at 64k, 60 GiB per rank: a fix on the same 8 ranks, never 16."""
    shape = ModelShape.from_config(QWEN3_8B)
    s = _group(65536, strategy="fsdp", world=8)
    assert plan_memory(shape, s).peak > 60 * GIB
    rec = recommended(shape, s, 60 * GIB, 65536, 1024)
    assert rec.settings.world == 8 and rec.peak <= 60 * GIB


def test_nothing_fits_names_the_closest():
    with pytest.raises(
        ValueError, match=r"nothing fits 10\.0 GiB per rank on 1 rank\(s\) .*closest: .*offload"
    ):
        recommended(QWEN4, _group(32768), 10 * GIB, 32768, 1024)
