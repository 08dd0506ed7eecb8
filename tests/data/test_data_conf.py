"""The conf/data/*.yaml files instantiate into working DataModules."""

import json
import logging
from pathlib import Path

import pytest
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from longact_pl.data.datamodule import LongContextDataModule
from longact_pl.data.items import Numbers, WordPairs
from longact_pl.data.sources import GeneratedSource, check_disjoint
from longact_pl.data.tasks.niah import NeedleInAHaystack
from longact_pl.rewards.string_match import StringMatchAll

CONF = Path(__file__).resolve().parents[2] / "conf" / "data"


def load(name: str):
    return OmegaConf.create({"seed": 42, "data": OmegaConf.load(CONF / f"{name}.yaml")})


def test_niah_default_task(tokenizer):
    dm = instantiate(load("niah").data, tokenizer=tokenizer)
    assert isinstance(dm, LongContextDataModule)
    assert isinstance(dm.train, GeneratedSource) and isinstance(dm.val, GeneratedSource)
    task = dm.train.task
    assert isinstance(task, NeedleInAHaystack)
    assert (task.num_keys, task.num_values, task.num_queries) == (4, 1, 1)
    assert isinstance(task.keys, WordPairs) and isinstance(task.values, Numbers) and task.values.digits == 7
    assert dm.train.lengths == [1024] and dm.val.lengths == [512, 1024, 2048] and len(dm.val) == 24
    assert (dm.train.seed, dm.val.seed, dm.seed) == (42, 1234, 42)
    assert (dm.batch_size, dm.max_prompt_tokens) == (2, 4096)
    assert isinstance(dm.reward, StringMatchAll)
    check_disjoint(dm.train, dm.val, limit=24)
    (record, _) = next(iter(dm.train_dataloader()))
    assert record["task"] == "niah_multikey" and record["target_length"] == 1024


def test_jsonl_requires_path():
    cfg = load("jsonl")
    with pytest.raises(MissingMandatoryValue):
        instantiate(cfg.data)


def _jsonl(tmp_path, name, prompts):
    path = tmp_path / name
    path.write_text("".join(json.dumps({"prompt": p, "answer": "a"}) + "\n" for p in prompts))
    return str(path)


def test_jsonl_train_and_val_paths_as_the_readme_writes_them(tmp_path, tokenizer):
    """``data=jsonl data.train.path=train.jsonl data.val.path=val.jsonl`` (and no val without the path)."""
    cfg = load("jsonl")
    cfg.data.train.path = _jsonl(tmp_path, "train.jsonl", ["t1", "t2"])
    assert instantiate(cfg.data, tokenizer=tokenizer).val is None
    cfg.data.val.path = _jsonl(tmp_path, "val.jsonl", ["v1"])
    dm = instantiate(cfg.data, tokenizer=tokenizer)
    assert [s.prompt for s in dm.val] == ["v1"] and [s.prompt for s in dm.train] == ["t1", "t2"]


def test_missing_validation_file_names_data_val_path(tmp_path):
    cfg = load("jsonl")
    cfg.data.train.path = _jsonl(tmp_path, "train.jsonl", ["t1"])
    cfg.data.val.path = str(tmp_path / "nope.jsonl")
    with pytest.raises(InstantiationException, match=r"nope.jsonl does not exist; set data.val.path"):
        instantiate(cfg.data)


def test_validation_file_overlapping_the_training_file_is_reported(tmp_path, caplog):
    cfg = load("jsonl")
    cfg.data.train.path = _jsonl(tmp_path, "train.jsonl", ["a", "b", "c"])
    cfg.data.val.path = _jsonl(tmp_path, "val.jsonl", ["b", "c", "d", "e"])
    with caplog.at_level(logging.WARNING):
        instantiate(cfg.data)
    assert "2 of the 4 prompts of data.val" in caplog.text and "train.jsonl" in caplog.text


def test_ruler_mix_makes_every_task(tokenizer):
    dm = instantiate(load("ruler_mix").data, tokenizer=tokenizer)
    tasks = {dm.train.task.tasks[i].name for i in range(len(dm.train.task.tasks))}
    assert tasks == {"niah_multikey", "niah_multivalue", "vt", "cwe", "fwe", "qa_synthetic"}
    for t in dm.train.task.tasks:
        sample = t.generate(1024, seed=0, tokenizer=tokenizer)
        assert abs(sample.meta["num_tokens"] - 1024) <= 0.05 * 1024


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.name)
def test_every_yaml_field_has_a_comment_above(path):
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        is_field = (
            stripped and not stripped.startswith("#") and ":" in stripped and not stripped.startswith("- ")
        )
        if is_field and i > 0:
            above = lines[i - 1].strip()
            # A node's _target_ is covered by the comment above the node itself.
            target_of_node = stripped.startswith("_target_:") and above.endswith(":")
            ok = above.startswith("#") or above.startswith("- ") or target_of_node
            assert ok, f"{path.name}:{i + 1}: {line!r} lacks a comment"
