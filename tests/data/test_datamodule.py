import json

import pytest

from longact_pl.data.datamodule import LongContextDataModule
from longact_pl.data.dataset import RECORD_KEYS, PromptDataset
from longact_pl.data.sources import GeneratedSource, JsonlSource
from longact_pl.data.tasks.niah import NeedleInAHaystack
from longact_pl.rewards.string_match import StringMatchAll


def make(tokenizer=None, **kwargs):
    task = NeedleInAHaystack(num_keys=4)
    args = dict(
        train=GeneratedSource(task, num_samples=6, lengths=[256, 384], seed=42),
        val=GeneratedSource(task, num_samples=4, lengths=[256], seed=1234),
        tokenizer=tokenizer,
        batch_size=2,
        val_batch_size=3,
        max_prompt_tokens=1024,
        seed=0,
        reward=StringMatchAll(),
    )
    args.update(kwargs)
    return LongContextDataModule(**args)


def test_train_batches_have_documented_records(tokenizer):
    dm = make()
    dm.tokenizer = tokenizer  # set after construction, as train.py may do
    batches = list(dm.train_dataloader())
    assert [len(b) for b in batches] == [2, 2, 2]
    records = [r for b in batches for r in b]
    assert all(tuple(r) == RECORD_KEYS for r in records)
    assert sorted(r["index"] for r in records) == [0, 1, 2, 3, 4, 5]
    for r in records:
        sample = dm.train[r["index"]]
        assert r["references"] == sample.references and r["task"] == "niah_multikey"
        assert r["target_length"] == (256 if r["index"] % 2 == 0 else 384)
        assert r["truncated"] is False
        assert all(isinstance(t, int) for t in r["prompt_ids"])
        assert tokenizer.decode(r["prompt_ids"]).endswith("<|im_start|>assistant\n")
        assert len(r["prompt_ids"]) > r["target_length"]  # chat template added
    # Seeded shuffle: a new datamodule with the same seed gives the same order, another seed another.
    order = [r["index"] for b in batches for r in b]
    again = [r["index"] for b in make(tokenizer).train_dataloader() for r in b]
    other = [r["index"] for b in make(tokenizer, seed=5).train_dataloader() for r in b]
    assert order == again and order != other


def test_val_batches_in_order_and_reward_exposed(tokenizer):
    dm = make(tokenizer)
    batches = list(dm.val_dataloader())
    assert [[r["index"] for r in b] for b in batches] == [[0, 1, 2], [3]]
    r = batches[0][0]
    assert dm.reward([f"The number is {r['references'][0]}."], [r["references"]]) == [1.0]
    assert make(tokenizer, val=None).val_dataloader() == []


def test_truncation_flag(tokenizer):
    dm = make(tokenizer, max_prompt_tokens=200)
    records = [r for b in dm.train_dataloader() for r in b]
    assert all(r["truncated"] and len(r["prompt_ids"]) <= 200 for r in records)


def test_calibration_prompts(tokenizer):
    dm = make(tokenizer)
    prompts = dm.calibration_prompts(3)
    assert len(prompts) == 3 and all(isinstance(p, list) and len(p) > 256 for p in prompts)
    assert prompts[0] == PromptDataset(dm.train, tokenizer, 1024)[0]["prompt_ids"]  # calib defaults to train
    with pytest.raises(ValueError, match="asked for 7 calibration prompts but the source has 6"):
        dm.calibration_prompts(7)


def test_jsonl_target_length_falls_back_to_prompt_length(tokenizer, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "Say hi.", "answer": "hi"}) + "\n")
    dm = LongContextDataModule(train=JsonlSource(str(path)), tokenizer=tokenizer, batch_size=1)
    (record,) = next(iter(dm.train_dataloader()))
    assert record["target_length"] == len(record["prompt_ids"])
    assert record["task"] == "d"


def test_errors(tokenizer):
    with pytest.raises(RuntimeError, match="tokenizer is not set"):
        make().train_dataloader()
    task = NeedleInAHaystack()
    with pytest.raises(ValueError, match="data.train.seed and data.val.seed are both 7"):
        LongContextDataModule(
            train=GeneratedSource(task, 4, [256], seed=7), val=GeneratedSource(task, 4, [256], seed=7)
        )


def test_val_shares_are_padded_to_equal_batch_counts_across_ranks(tokenizer):
    import torch

    from longact_pl.data.dataset import drop_padding

    val = GeneratedSource(NeedleInAHaystack(num_keys=4), num_samples=5, lengths=[256], seed=1)
    shares = []
    for rank in (0, 1):
        dm = make(tokenizer, val=val, val_batch_size=2)
        dm._position = lambda rank=rank: (0, 0, rank, 2)
        shares.append([[(r["index"], r.get("padding", False)) for r in b] for b in dm.val_dataloader()])
    # 5 samples on 2 ranks: rank 1 gets one padding copy of its first sample, so both run 2 batches
    assert shares == [
        [[(0, False), (2, False)], [(4, False)]],
        [[(1, False), (3, False)], [(1, True)]],
    ]
    records = [{"index": 1}, {"index": 1, "padding": True}]
    kept, scores = drop_padding(records, torch.tensor([1.0, 0.5]))
    assert kept == [{"index": 1}] and scores.tolist() == [1.0]


def test_two_heldout_families_in_one_concatenated_source(tokenizer):
    from longact_pl.data.concat import ConcatSource
    from longact_pl.data.haystack import EssayHaystack
    from longact_pl.eval.accuracy import source_task_names

    multikey = GeneratedSource(NeedleInAHaystack(num_keys=4), num_samples=3, lengths=[384], seed=1234)
    multivalue = GeneratedSource(
        NeedleInAHaystack(num_values=4, haystack=EssayHaystack()), num_samples=2, lengths=[256], seed=4321
    )
    val = ConcatSource([multikey, multivalue])
    dm = make(tokenizer, val=val)  # the tokenizer reaches both parts
    assert len(val) == 5 and [val.target_length(i) for i in range(5)] == [384, 384, 384, 256, 256]
    assert val[3].prompt == multivalue[0].prompt and val[2].prompt == multikey[2].prompt
    assert source_task_names(val) == ["niah_multikey", "niah_multivalue"]
    # grouped by length (shortest first), index = position in the concatenation (stable prompt ids)
    batches = [[(r["index"], r["task"], r["target_length"]) for r in b] for b in dm.val_dataloader()]
    assert batches == [
        [(3, "niah_multivalue", 256), (4, "niah_multivalue", 256), (0, "niah_multikey", 384)],
        [(1, "niah_multikey", 384), (2, "niah_multikey", 384)],
    ]
    with pytest.raises(IndexError):
        val[5]
    with pytest.raises(ValueError, match="a data.val.sources seed are both 4321"):
        make(tokenizer, train=GeneratedSource(NeedleInAHaystack(), 4, [256], seed=4321), val=val)
    with pytest.raises(ValueError, match="at least one source"):
        ConcatSource([])
