"""Calibration on long prompts (``masking.calib_min_tokens``), recorded; post_rope + channel refused."""

import pytest

from longact_pl.masking import Head, RopePair, SaliencyMask
from longact_pl.masking.calibrate import select_calibration
from longact_pl.masking.options import MaskingOptions
from tests.masking import models
from tests.masking.stub import StubData, StubModule, fit


class _Source:
    """Calibration prompts of the given lengths (raises past its end, as the data module does)."""

    def __init__(self, lengths):
        self.lengths, self.asked = lengths, []

    def calibration_prompts(self, n):
        self.asked.append(n)
        if n > len(self.lengths):
            raise ValueError(f"asked for {n} calibration prompts but the source has {len(self.lengths)}")
        return [[7] * k for k in self.lengths[:n]]


def test_first_long_prompts_are_chosen_and_their_indices_returned():
    source = _Source([5, 50, 6, 60, 7, 8, 70, 9])
    prompts, used = select_calibration([source], 3, min_tokens=40)
    assert used == [1, 3, 6] and [len(p) for p in prompts] == [50, 60, 70]
    assert source.asked[:3] == [3, 6, 12]  # doubled until enough were long, then bisected to the source's end
    plain, first = select_calibration([_Source([5, 50, 6])], 2)
    assert first == [0, 1] and [len(p) for p in plain] == [5, 50]


def test_too_few_long_prompts_is_an_error_naming_the_field():
    with pytest.raises(
        ValueError, match=r"masking.calib_min_tokens=55: only 1 of the first 4 .* longest has 60"
    ):
        select_calibration([_Source([5, 50, 6, 60])], 2, min_tokens=55)


def test_callback_records_the_calibration_prompts_in_its_summary():
    cb = SaliencyMask(ratio=0.3, calib_samples=2, calib_min_tokens=30)
    fit(StubModule(models.llama()), StubData(models.VOCAB, calib_len=40), [cb], max_steps=1)
    summary = cb.summary()
    assert summary["calib_min_tokens"] == 30
    assert summary["calibration"] == {"prompt_indices": [0, 1], "prompt_tokens": [40, 40]}
    assert cb.state_dict()["calibration"] == summary["calibration"]
    with pytest.raises(ValueError, match="masking.calib_min_tokens=41"):
        fit(
            StubModule(models.llama()),
            StubData(models.VOCAB, calib_len=40),
            [SaliencyMask(calib_min_tokens=41)],
            1,
        )


def _opts(**kw):
    base = dict(
        selector="TopK", targets=("q_proj", "k_proj"), ratio=0.3, statistic="mean_abs", unit="channel",
        scope="per_matrix", pairing="independent", norms="dense", others="dense", measure_at="proj",
        calib_samples=1, refresh_every=0, ema=0.9, seed=0,
    )  # fmt: skip
    return MaskingOptions(**{**base, **kw})


def test_post_rope_channel_scores_are_refused_naming_rope_pair_and_head():
    with pytest.raises(ValueError, match=r"masking/unit=rope_pair .* masking/unit=head"):
        SaliencyMask(measure_at="post_rope")
    for unit in (RopePair(), Head()):
        assert SaliencyMask(measure_at="post_rope", unit=unit).options.unit == unit.name
    with pytest.raises(ValueError, match="calib_min_tokens"):
        _opts(calib_min_tokens=-1)
