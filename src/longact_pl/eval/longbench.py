"""LongBench v2: the official zero-shot and chain-of-thought prompts, middle truncation, answer extraction.

Prompts follow THUDM/LongBench's ``prompts/0shot*.txt``; over-long contexts are cut in the middle (the
first and last halves of the context's tokens are kept) so the chat-templated prompt fits
``max_input_tokens``. The answer is the first ``The correct answer is (X)`` (or ``... is X``) after ``*``
is stripped (so markdown bold does not hide it); when a response names two answers, the first one counts.
No match is wrong and is counted as ``no_answer``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from longact_pl.data.prompting import encode_prompt, middle_truncate, template_ids, to_messages
from longact_pl.eval.batch_scoring import BatchResult, evaluate_batch
from longact_pl.eval.benchmark_plots import plot_longbench
from longact_pl.eval.context import EvalContext, check_decoding, chunks
from longact_pl.eval.longbench_data import load_longbench
from longact_pl.eval.report import longbench_markdown, longbench_summary, write_summary

_QUESTION = (
    "Please read the following text and answer the question below.\n\n<text>\n$DOC$\n</text>\n\n"
    "What is the correct answer to this question: $Q$\n"
    "Choices:\n(A) $C_A$\n(B) $C_B$\n(C) $C_C$\n(D) $C_D$\n\n"
)
_FORMAT = 'Format your response as follows: "The correct answer is (insert answer here)".'
TEMPLATE_0SHOT = _QUESTION + _FORMAT
TEMPLATE_COT = _QUESTION + "Let’s think step by step:"
TEMPLATE_COT_ANSWER = (
    _QUESTION + "Let’s think step by step: $COT$\n\n"
    "Based on the above, what is the single, most likely answer choice? " + _FORMAT
)
_SLOT = re.compile(r"\$(DOC|Q|C_A|C_B|C_C|C_D|COT)\$")
_ANSWER = (re.compile(r"The correct answer is \(([A-D])\)"), re.compile(r"The correct answer is ([A-D])"))


def fill(template: str, item: Mapping[str, str], doc: str, cot: str = "") -> str:
    """Fill a template in one pass (text inside the document cannot be mistaken for a placeholder)."""
    values = {
        "DOC": doc, "Q": item["question"].strip(), "COT": cot,
        **{f"C_{c}": item[f"choice_{c}"].strip() for c in "ABCD"},
    }  # fmt: skip
    return _SLOT.sub(lambda m: values[m.group(1)], template)


def extract_answer(response: str) -> str | None:
    """The official extraction: strip ``*``, then the first ``The correct answer is (X)``, else ``... is X``.

    Returns:
        ``"A"``..``"D"``, or ``None`` when the response has no answer in that format.
    """
    text = response.replace("*", "")
    for pattern in _ANSWER:
        match = pattern.search(text)
        if match:
            return match.group(1)
    return None


class ChoiceMatch:
    """Reward 1.0 when the extracted answer equals the gold letter (``references[i][0]``), else 0.0."""

    def __call__(
        self, completions: Sequence[str], references: Sequence[Sequence[str]], **meta
    ) -> list[float]:
        """Score each completion against its gold letter."""
        return [float(extract_answer(c) == refs[0]) for c, refs in zip(completions, references)]


def build_prompt(
    tokenizer, template: str, item: Mapping[str, str], max_input_tokens: int, cot: str = "",
    system_prompt: str | None = None,
) -> tuple[list[int], bool]:  # fmt: skip
    """Chat-templated ids of ``item`` with the context middle-truncated to fit ``max_input_tokens``.

    Returns:
        ``(ids, truncated)``.

    Raises:
        ValueError: If the prompt without any context already exceeds ``max_input_tokens``.
    """
    empty = len(template_ids(tokenizer, to_messages(fill(template, item, "", cot), system_prompt)))
    keep = max_input_tokens - empty
    if keep < 0:
        raise ValueError(
            f"LongBench v2 item {item['_id']}: the prompt without its context is {empty} tokens, more than "
            f"max_input_tokens={max_input_tokens}; raise eval.max_input_tokens"
        )
    context = item["context"].strip()
    doc = middle_truncate(tokenizer, context, keep)
    # Re-encoding across the cut can add a token or two: encode_prompt trims the rest, still in the middle.
    ids, cut = encode_prompt(tokenizer, fill(template, item, doc, cot), max_input_tokens, system_prompt)
    return ids, cut or doc != context


class LongBenchV2:
    """LongBench v2 multiple choice: accuracy overall, by difficulty and by length split.

    Args:
        path: Local ``.json``/``.jsonl``/``.parquet`` file, or a dataset id in the local HF cache.
        split: Split of a dataset id.
        limit: Evaluate only the first ``limit`` rows (``None`` = all).
        cot: Chain of thought: a reasoning call, then an answer call that sees the reasoning.
        max_input_tokens: Longest templated prompt (``None`` = the model's window minus the budget).
        max_new_tokens: Budget of the answer (official: 128).
        cot_max_new_tokens: Budget of the reasoning call (official: 1024).
        batch_size: Prompts per generate call.
        greedy: Greedy decoding; otherwise ``rollout.group_size`` samples per question, each scored (with
            CoT the reasoning is sampled and the answer call is greedy).
        seed: Sampling seed.
        system_prompt: Optional system message.
    """

    def __init__(
        self,
        path: str,
        split: str = "train",
        limit: int | None = None,
        cot: bool = False,
        max_input_tokens: int | None = None,
        max_new_tokens: int = 128,
        cot_max_new_tokens: int = 1024,
        batch_size: int = 1,
        greedy: bool = True,
        seed: int = 0,
        system_prompt: str | None = None,
    ) -> None:
        check_decoding(batch_size, "eval")
        if min(max_new_tokens, cot_max_new_tokens) < 1:
            raise ValueError("eval.max_new_tokens and eval.cot_max_new_tokens must be >= 1")
        self.items = load_longbench(path, split, limit)
        self.cot = cot
        self.max_input_tokens = max_input_tokens
        self.max_new_tokens = max_new_tokens
        self.cot_max_new_tokens = cot_max_new_tokens
        self.batch_size = batch_size
        self.greedy = greedy
        self.seed = seed
        self.system_prompt = system_prompt

    def input_budget(self, ctx: EvalContext) -> int:
        """``max_input_tokens``, or the model's window minus the largest generation budget.

        Raises:
            ValueError: If neither is known.
        """
        if self.max_input_tokens is not None:
            return self.max_input_tokens
        window = ctx.window()
        if window is None:
            raise ValueError("the model declares no max_position_embeddings; set eval.max_input_tokens")
        return window - (self.cot_max_new_tokens if self.cot else self.max_new_tokens)

    def _answer_call(
        self, ctx: EvalContext, batch: list[dict], budget: int, seed: int
    ) -> tuple[list[dict], BatchResult]:
        """Generate (reasoning and) answers for a batch; return the answer-call records and their result."""
        scorer = ChoiceMatch()
        if not self.cot:
            records = [self._record(ctx, item, TEMPLATE_0SHOT, budget) for item in batch]
            res = evaluate_batch(ctx.engine, ctx.policy, ctx.tokenizer, records, scorer, self.max_new_tokens,
                                 greedy=self.greedy, seed=seed)  # fmt: skip
            return records, res
        first = [self._record(ctx, item, TEMPLATE_COT, budget) for item in batch]
        out = ctx.engine.generate(
            ctx.policy,
            ctx.tokenizer,
            [r["prompt_ids"] for r in first],
            greedy=self.greedy,
            seed=seed,
            max_new_tokens=self.cot_max_new_tokens,
        )
        reasonings = [c.strip() for c in out.completions]
        items = [batch[row // out.group_size] for row in range(len(reasonings))]
        records = [
            self._record(ctx, it, TEMPLATE_COT_ANSWER, budget, cot) for it, cot in zip(items, reasonings)
        ]
        for row, rec in enumerate(records):
            rec.update(sample=row % out.group_size, reasoning=reasonings[row])
        res = evaluate_batch(ctx.engine, ctx.policy, ctx.tokenizer, records, scorer, self.max_new_tokens,
                             greedy=True)  # fmt: skip
        return records, res

    def _record(self, ctx: EvalContext, item: Mapping, template: str, budget: int, cot: str = "") -> dict:
        ids, truncated = build_prompt(ctx.tokenizer, template, item, budget, cot, self.system_prompt)
        return {
            "prompt_ids": ids,
            "references": [item["answer"]],
            "task": "longbench_v2",
            "truncated": truncated,
            "item": item,
        }

    def run(self, ctx: EvalContext) -> dict:
        """Answer every question, write the rows, and return the summary."""
        budget = self.input_budget(ctx)
        bar = ctx.bar(len(self.items), "LongBench v2")
        for b, batch in enumerate(chunks(self.items, self.batch_size)):
            records, res = self._answer_call(ctx, list(batch), budget, self.seed + b)
            rows = []
            for row, (text, value) in enumerate(zip(res.completions, res.scores.tolist())):
                rec = records[res.prompt_index(row)]
                item = rec["item"]
                rows.append(
                    {
                        "id": item["_id"],
                        "task": "longbench_v2",
                        **{k: item[k] for k in ("domain", "sub_domain", "difficulty", "length")},
                        "prompt_tokens": len(rec["prompt_ids"]),
                        "truncated": rec["truncated"],
                        "sample": rec.get("sample", row % res.group_size),
                        "reasoning": rec.get("reasoning"),
                        "output": text,
                        "answer": extract_answer(text),
                        "gold": item["answer"],
                        "score": 100.0 * value,
                    }
                )
            ctx.writer.write(rows)
            bar.update(len(batch))
        bar.close()
        decoding = (
            "greedy" if self.greedy else f"sampled ({ctx.engine.group_size} per question, seed {self.seed})"
        )
        return longbench_summary(
            ctx.writer.rows,
            model=ctx.model_name,
            decoding=decoding,
            prompt="0-shot CoT" if self.cot else "0-shot",
            max_input_tokens=budget,
        )

    def write_report(self, summary: dict, run_dir: Path) -> list[Path]:
        """Write ``summary.json``, ``summary.md`` and ``longbench_v2.png``."""
        return write_summary(summary, longbench_markdown(summary), run_dir) + [
            plot_longbench(summary, run_dir / "longbench_v2.png")
        ]
