"""The 13 configured RULER tasks: fitted lengths, recoverable answers, answer prefixes, determinism."""

import re
from collections import Counter

import pytest
from hydra.utils import instantiate

from longact_pl.eval.ruler import sample_seed
from longact_pl.eval.tasks import RejectAmbiguous
from tests.eval.helpers import compose_eval

RULER_13 = [
    "niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2",
    "niah_multikey_3", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe", "qa_1", "qa_2",
]  # fmt: skip
# uuid needles are ~80 tokens each: at 512 tokens the closest fit misses the 5% tolerance (see skip_unfit)
CASES = [(t, n) for t in RULER_13 for n in (512, 1024) if (t, n) != ("niah_multikey_3", 512)]
CASES.append(("niah_multikey_3", 2048))


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return instantiate(compose_eval(tmp_path_factory.mktemp("r"), "eval.n=2").eval)


def n_tokens(tokenizer, text):
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_suite_has_rulers_13_tasks_budgets_and_metrics(bench):
    assert list(bench.tasks) == RULER_13
    budgets = {k: t.max_new_tokens for k, t in bench.tasks.items()}
    others = {"vt": 30, "cwe": 120, "fwe": 50, "qa_1": 32, "qa_2": 32}
    assert budgets == {**{t: 128 for t in RULER_13[:8]}, **others}
    metrics = {k: type(t.metric).__name__ for k, t in bench.tasks.items()}
    assert {k for k, v in metrics.items() if v == "StringMatchPart"} == {"qa_1", "qa_2"}
    assert all(v == "StringMatchAll" for k, v in metrics.items() if not k.startswith("qa"))
    assert bench.lengths == [4096, 8192, 16384, 32768, 65536, 131072] and bench.threshold == 85.6


def _check_recoverable(name, sample):
    prompt, refs = sample.prompt, sample.references
    assert refs and all(r in prompt for r in refs)
    if name.startswith("niah"):
        for key in sample.meta["queries"]:
            assert key in prompt
        assert all(re.search(rf"for \S+ is: {re.escape(r)}\.", prompt) for r in refs)
        assert not RejectAmbiguous.is_ambiguous(sample)
    elif name == "vt":
        assert f"VAR {refs[0]} = " in prompt
        assert all(f"VAR {b} = VAR {a}." in prompt for a, b in zip(refs, refs[1:]))
    elif name == "cwe":
        counts = Counter(re.findall(r"\d+\. (\S+)", prompt))
        assert min(counts[r] for r in refs) > max(c for w, c in counts.items() if w not in refs)
    elif name == "fwe":
        counts = Counter(w for w in prompt.split() if w != "....")
        assert [w for w, _ in counts.most_common(3)] == refs
    else:
        assert sample.meta["town"] in prompt and sample.meta["answer_prefix"] == "Answer:"


@pytest.mark.parametrize(("name", "length"), CASES)
def test_task_fits_length_answer_is_recoverable_and_deterministic(bench, tokenizer, name, length):
    task = bench.tasks[name]
    sample = task.generator.generate(length, sample_seed(bench.seed, name, length, 0), tokenizer)
    assert abs(n_tokens(tokenizer, sample.prompt) - length) <= 0.05 * length
    assert sample.task == name
    _check_recoverable(name, sample)
    rec = bench.record(name, length, 0, tokenizer)
    assert rec == bench.record(name, length, 0, tokenizer)
    other = bench.record(name, length, 1, tokenizer)
    assert other["prompt_ids"] != rec["prompt_ids"] and other["references"] != rec["references"]
    assert rec["references"] == sample.references and rec["task"] == name and rec["target_length"] == length
    # the answer prefix follows the assistant header: the prompt ends with it
    prefix = tokenizer(sample.meta["answer_prefix"], add_special_tokens=False)["input_ids"]
    assert rec["prompt_ids"][-len(prefix) :] == prefix
    head = tokenizer.decode(rec["prompt_ids"][: -len(prefix)])
    assert head.endswith("<|im_start|>assistant\n")


def test_unfittable_length_names_task_and_length(bench, tokenizer):
    with pytest.raises(ValueError, match=r"niah_multikey_3 at 512 tokens: .*eval.lengths"):
        bench.record("niah_multikey_3", 512, 0, tokenizer)


def test_cwe_switches_to_rulers_heavy_setting_from_4096(bench, tokenizer):
    short = bench.tasks["cwe"].generator.generate(1024, 3, tokenizer)
    long = bench.tasks["cwe"].generator.generate(4096, 3, tokenizer)
    for sample, repeats in ((short, 6), (long, 30)):
        counts = Counter(re.findall(r"\d+\. (\S+)", sample.prompt))
        assert {counts[r] for r in sample.references} == {repeats}
        assert sample.task == "cwe"


def test_reject_ambiguous_redraws_a_sample_that_reuses_the_asked_key(tokenizer):
    from longact_pl.data.types import Sample

    class Scripted:
        name = "fake"

        def __init__(self):
            self.seeds = []

        def generate(self, target_tokens, seed, tokenizer):
            self.seeds.append(seed)
            dup = " One of the special magic numbers for k-ey is: 999." if len(self.seeds) == 1 else ""
            text = "One of the special magic numbers for k-ey is: 123." + dup
            return Sample(text, ["123"], "fake", {"queries": ["k-ey"]})

    inner = Scripted()
    sample = RejectAmbiguous(inner).generate(100, 7, tokenizer)
    assert len(inner.seeds) == 2 and inner.seeds[0] == 7 and "999" not in sample.prompt
