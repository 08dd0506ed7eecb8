"""RULER's 13 tasks, run natively on the synthetic task generators (see ``conf/eval/ruler.yaml``).

Every (task, length) gets ``n`` fresh samples: the task prompt is fitted to the length (tokens of the
prompt text, before the chat template), chat-templated, and RULER's answer prefix is appended after the
assistant header, so the model continues e.g. "The special magic number for X mentioned in the provided
text is". Completions are scored with the task's string-match reward (x100 in the report).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from longact_pl.data.prompting import encode_prompt
from longact_pl.data.types import Task
from longact_pl.eval.accuracy import TaskLengthAccuracy
from longact_pl.eval.batch_scoring import evaluate_batch
from longact_pl.eval.benchmark_plots import plot_ruler
from longact_pl.eval.context import EvalContext, check_decoding
from longact_pl.eval.report import ruler_markdown, ruler_summary, write_summary
from longact_pl.rewards.string_match import postprocess
from longact_pl.rewards.types import RewardFn

log = logging.getLogger(__name__)


class RulerTask:
    """One RULER task: a sample generator, a generation budget and a scorer.

    Args:
        generator: Builds a sample of a target length (``generate(target_tokens, seed, tokenizer)``).
        max_new_tokens: Generation budget (RULER: niah 128, vt 30, cwe 120, fwe 50, qa 32).
        metric: Per-completion scorer in ``[0, 1]``, e.g. ``StringMatchAll`` or ``StringMatchPart``.
        answer_prefix: Append the sample's ``meta["answer_prefix"]`` after the assistant header.
    """

    def __init__(
        self, generator: Task, max_new_tokens: int, metric: RewardFn, answer_prefix: bool = True
    ) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"RulerTask: max_new_tokens must be >= 1, got {max_new_tokens}")
        self.generator = generator
        self.max_new_tokens = max_new_tokens
        self.metric = metric
        self.answer_prefix = answer_prefix


def sample_seed(seed: int, task: str, length: int, index: int) -> int:
    """Seed of sample ``index`` of ``task`` at ``length`` (stable across runs and machines)."""
    digest = hashlib.sha256(f"{seed}/{task}/{length}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class RulerBenchmark:
    """The RULER suite: tasks x lengths x ``n`` samples, per-task budgets and scorers, effective length.

    Args:
        tasks: Task name -> :class:`RulerTask` (the names are the report's rows).
        lengths: Target lengths in tokens.
        n: Samples per task and length.
        threshold: Effective-length threshold in percent (85.6 = Llama-2-7B at 4k, RULER's baseline).
        batch_size: Prompts per generate call.
        greedy: Greedy decoding; otherwise ``rollout.group_size`` samples per prompt, each scored.
        seed: Seed of the samples (and of sampling).
        only: Run only these tasks (``None`` = all).
        system_prompt: Optional system message.
        skip_unfit: Skip (and report) samples whose prompt cannot be fitted to the length (e.g. uuid needles
            of ~80 tokens at 512 tokens) instead of failing; a cell left empty shows as ``-`` and the
            per-length average then covers fewer tasks (the tables say so).

    Raises:
        ValueError: On empty tasks/lengths, ``n < 1`` or an unknown name in ``only``.
    """

    def __init__(
        self,
        tasks: Mapping[str, RulerTask],
        lengths: Sequence[int],
        n: int,
        threshold: float = 85.6,
        batch_size: int = 8,
        greedy: bool = True,
        seed: int = 0,
        only: Sequence[str] | None = None,
        system_prompt: str | None = None,
        skip_unfit: bool = True,
    ) -> None:
        if not tasks:
            raise ValueError("eval.tasks is empty; list at least one RULER task")
        if not lengths or min(int(n) for n in lengths) < 1:
            raise ValueError(f"eval.lengths must be positive token counts, got {list(lengths)}")
        if n < 1:
            raise ValueError(f"eval.n must be >= 1 sample per task and length, got {n}")
        check_decoding(batch_size, "eval")
        unknown = [t for t in (only or []) if t not in tasks]
        if unknown:
            raise ValueError(f"eval.only names unknown task(s) {unknown}; choose from {list(tasks)}")
        self.tasks = {k: v for k, v in tasks.items() if not only or k in only}
        self.lengths = [int(x) for x in lengths]
        self.n = n
        self.threshold = float(threshold)
        self.batch_size = batch_size
        self.greedy = greedy
        self.seed = seed
        self.system_prompt = system_prompt
        self.skip_unfit = skip_unfit

    def record(self, name: str, length: int, index: int, tokenizer) -> dict:
        """Prompt record of sample ``index`` of task ``name`` at ``length`` tokens.

        Raises:
            ValueError: If the task cannot build a prompt of that length (naming task and length).
        """
        task = self.tasks[name]
        try:
            sample = task.generator.generate(length, sample_seed(self.seed, name, length, index), tokenizer)
        except ValueError as err:
            raise ValueError(
                f"RULER task {name} at {length} tokens: {err} (drop that length from eval.lengths, "
                "or the task with eval.only=[...])"
            ) from err
        ids, _ = encode_prompt(tokenizer, sample.prompt, None, self.system_prompt)
        prefix = sample.meta.get("answer_prefix") if task.answer_prefix else None
        if prefix:
            ids = ids + list(tokenizer(prefix, add_special_tokens=False, verbose=False)["input_ids"])
        return {
            "id": f"{name}/{length}/{index}",
            "prompt_ids": ids,
            "references": list(sample.references),
            "task": name,
            "target_length": length,
            "answer_prefix": prefix,
        }

    def run(self, ctx: EvalContext) -> dict:
        """Generate, score and write every (task, length, sample); return the summary."""
        metric = TaskLengthAccuracy(list(self.tasks), self.lengths)
        skipped: list[dict] = []
        window = ctx.window()
        bar = ctx.bar(len(self.tasks) * len(self.lengths) * self.n, "RULER")
        for name, task in self.tasks.items():
            for length in self.lengths:
                if window is not None and length + task.max_new_tokens > window:
                    log.warning(
                        "%s at %d tokens exceeds the model's window of %d tokens", name, length, window
                    )
                for start in range(0, self.n, self.batch_size):
                    indices = range(start, min(start + self.batch_size, self.n))
                    records = self._records(name, length, indices, ctx.tokenizer, skipped)
                    bar.update(len(indices) - len(records))
                    if not records:
                        continue
                    res = evaluate_batch(
                        ctx.engine, ctx.policy, ctx.tokenizer, records, task.metric, task.max_new_tokens,
                        greedy=self.greedy, seed=sample_seed(self.seed, name, length, -1 - start),
                    )  # fmt: skip
                    rows = []
                    for row, (text, value) in enumerate(zip(res.completions, res.scores.tolist())):
                        rec = records[res.prompt_index(row)]
                        rows.append({
                            "id": rec["id"], "task": name, "length": length,
                            "prompt_tokens": len(rec["prompt_ids"]), "sample": row % res.group_size,
                            "output": text, "answer": postprocess(text), "references": rec["references"],
                            "score": 100.0 * value,
                        })  # fmt: skip
                    ctx.writer.write(rows)
                    metric.update([name] * len(rows), [length] * len(rows), res.scores)
                    bar.update(len(records))
        bar.close()
        return ruler_summary(
            metric.compute(), list(self.tasks), self.lengths, self.threshold,
            model=ctx.model_name, n=self.n, decoding=self._decoding(ctx),
            budgets={k: t.max_new_tokens for k, t in self.tasks.items()}, skipped=skipped,
        )  # fmt: skip

    def _records(self, name: str, length: int, indices: range, tokenizer, skipped: list[dict]) -> list[dict]:
        """Records of ``indices``; unfittable samples go to ``skipped`` when ``skip_unfit``."""
        records = []
        for i in indices:
            try:
                records.append(self.record(name, length, i, tokenizer))
            except ValueError as err:
                if not self.skip_unfit:
                    raise
                log.warning("skipping sample %d: %s", i, err)
                skipped.append({"task": name, "length": length, "index": i, "reason": str(err)})
        return records

    def _decoding(self, ctx: EvalContext) -> str:
        return "greedy" if self.greedy else f"sampled ({ctx.engine.group_size} per prompt, seed {self.seed})"

    def write_report(self, summary: dict, run_dir: Path) -> list[Path]:
        """Write ``summary.json``, ``summary.md`` and ``ruler.png``."""
        return write_summary(summary, ruler_markdown(summary), run_dir) + [
            plot_ruler(summary, run_dir / "ruler.png")
        ]
