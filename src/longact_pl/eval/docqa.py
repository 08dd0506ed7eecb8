"""``evaluate.py eval=docqa``: long-document QA scored as in training (rule, then the LLM judge below 1).

Scores are percentages: ``overall`` is the mean over sources of each source's mean (QwenLong-L1 reports the
average over its data sets), and each ``<source>`` row the mean over that source's questions. Rows of
``predictions.jsonl`` carry the judge's verdict of each answer; the raw verdicts also go to
``judge_verdicts/`` beside it. ``scripts/compare_evals.py`` pairs two such evaluations prompt by prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from longact_pl.data.docqa import DocQASource, fit_document
from longact_pl.eval.batch_scoring import evaluate_batch
from longact_pl.eval.context import EvalContext, check_decoding, chunks
from longact_pl.eval.report import write_summary
from longact_pl.rewards import hooks as reward_hooks
from longact_pl.rewards.answers import extract_answer
from longact_pl.rewards.types import RewardFn


def docqa_summary(rows: Sequence[Mapping], **info) -> dict:
    """Per-source means and their macro average (percent), with counts, judge and truncation totals."""
    by_source: dict[str, list[float]] = {}
    for row in rows:
        by_source.setdefault(row["task"], []).append(float(row["score"]))
    means = {s: round(sum(v) / len(v), 4) for s, v in sorted(by_source.items())}
    overall = round(sum(means.values()) / len(means), 4) if means else None
    scores = {"overall": overall, **means} if means else {}
    return {
        "benchmark": "docqa",
        **info,
        "overall": overall,
        "by_source": means,
        "counts": {"overall": len(rows), **{s: len(v) for s, v in sorted(by_source.items())}},
        "truncated": sum(bool(r["truncated"]) for r in rows),
        "no_answer": sum(r["answer"] is None for r in rows),
        "scores": scores,
        "headline": list(scores),
    }


def docqa_markdown(summary: Mapping) -> str:
    """Table of the per-source scores, with counts and what the judge did."""
    lines = [f"# DocQA: {summary.get('model', '')}", "",
             f"{summary['counts']['overall']} questions, {summary.get('decoding', '')}; score in percent "
             "(rule, then the judge where the rule is below 1); overall = mean over sources.", "",
             "| source | score | questions |", "|---|---:|---:|"]  # fmt: skip
    for source, value in summary["by_source"].items():
        lines.append(f"| {source} | {value:.1f} | {summary['counts'][source]} |")
    lines += [f"| overall | {summary['overall']:.1f} | {summary['counts']['overall']} |", "",
              f"Prompts whose document was cut in the middle to fit: {summary['truncated']}",
              f"No extractable final answer: {summary['no_answer']}",
              f"Judge: {summary.get('judge', {})}", ""]  # fmt: skip
    return "\n".join(lines)


class DocQABenchmark:
    """Answer every DocQA row, score it with ``reward`` (rule then judge), report per source.

    Args:
        path: The DocQA ``.jsonl`` file.
        reward: The scorer (``RuleThenJudge`` as in training, or any reward).
        template: Prompt preset or text (see :mod:`longact_pl.data.docqa`).
        limit: Evaluate only the first ``limit`` rows.
        max_input_tokens: Longest chat-templated prompt (the document's middle is cut to fit).
        max_new_tokens: Answer budget.
        batch_size: Prompts per generate call (all of a batch's judgements go to the judge together).
        greedy: Greedy decoding; otherwise ``rollout.group_size`` samples per question, each scored.
        seed: Sampling seed.
        system_prompt: Optional system message.
    """

    def __init__(
        self,
        path: str,
        reward: RewardFn,
        template: str = "qwenlong_l1",
        limit: int | None = None,
        max_input_tokens: int = 4096,
        max_new_tokens: int = 256,
        batch_size: int = 8,
        greedy: bool = True,
        seed: int = 0,
        system_prompt: str | None = None,
    ) -> None:
        check_decoding(batch_size, "eval")
        if max_new_tokens < 1 or max_input_tokens < 1:
            raise ValueError("eval.max_new_tokens and eval.max_input_tokens must be >= 1")
        self.source = DocQASource(path, template, limit, config_key="eval")
        self.reward, self.max_input_tokens, self.max_new_tokens = reward, max_input_tokens, max_new_tokens
        self.batch_size, self.greedy, self.seed, self.system_prompt = batch_size, greedy, seed, system_prompt

    def _record(self, ctx: EvalContext, index: int) -> dict:
        sample = self.source[index]
        meta = sample.meta
        ids, truncated = fit_document(ctx.tokenizer, meta["template"], meta["context"], meta["question"],
                                      self.max_input_tokens, self.system_prompt)  # fmt: skip
        record = {"prompt_ids": ids, "references": sample.references, "task": sample.task,
                  "truncated": truncated, "question": meta["question"], "id": meta["id"]}  # fmt: skip
        record.update({k: meta[k] for k in ("chunk_ids", "evidence") if k in meta})
        return record

    def run(self, ctx: EvalContext) -> dict:
        """Answer and score every row (judge counters summed over batches), write the rows, summarise."""
        bar = ctx.bar(len(self.source), "DocQA")
        judge: dict[str, float] = {}
        for b, indices in enumerate(chunks(range(len(self.source)), self.batch_size)):
            records = [self._record(ctx, i) for i in indices]
            reward_hooks.begin_step(self.reward, b, "eval")
            res = evaluate_batch(ctx.engine, ctx.policy, ctx.tokenizer, records, self.reward,
                                 self.max_new_tokens, greedy=self.greedy, seed=self.seed + b)  # fmt: skip
            for key, value in reward_hooks.step_metrics(self.reward).items():
                name = key.rsplit("/", 1)[-1]
                judge[name] = judge.get(name, 0.0) + value
            details = getattr(self.reward, "last_details", None) or [None] * len(res.completions)
            rows = []
            for row, (text, value) in enumerate(zip(res.completions, res.scores.tolist())):
                rec = records[res.prompt_index(row)]
                rows.append({"id": rec["id"], "task": rec["task"], "prompt_tokens": len(rec["prompt_ids"]),
                             "truncated": rec["truncated"], "sample": row % res.group_size, "output": text,
                             "answer": extract_answer(text), "references": rec["references"],
                             "judge": details[row] if row < len(details) else None,
                             "score": 100.0 * value})  # fmt: skip
            ctx.writer.write(rows)
            bar.update(len(indices))
        bar.close()
        decoding = "greedy" if self.greedy else f"sampled ({ctx.engine.group_size} per question)"
        return docqa_summary(ctx.writer.rows, model=ctx.model_name, decoding=decoding,
                             max_input_tokens=self.max_input_tokens, judge=judge)  # fmt: skip

    def write_report(self, summary: dict, run_dir: Path) -> list[Path]:
        """Write ``summary.json`` and ``summary.md``."""
        return write_summary(summary, docqa_markdown(summary), run_dir)
