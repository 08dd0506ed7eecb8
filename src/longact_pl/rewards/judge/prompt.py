"""The judge's prompt (a configurable template) and how its reply becomes a verdict."""

from __future__ import annotations

import re

from longact_pl.rewards.judge.types import Messages

# QwenLong-L1's verifier instructions (an answer-equivalence check, not a re-solve of the problem).
DEFAULT_SYSTEM = (
    "You are an expert in verifying if two answers are the same.\n"
    "Your input is a problem and two answers, Answer 1 and Answer 2. You need to check if they are "
    "equivalent.\nYour task is to determine if two answers are equivalent, without attempting to solve the "
    "original problem.\nCompare the answers to verify they represent identical values or meaning, even when "
    "written in different forms or notations.\n\nYour output must follow the following format:\n"
    "1) Provide an explanation for why the answers are equivalent or not.\n"
    "2) Then provide your final answer in the form of: [[YES]] or [[NO]]"
)
DEFAULT_TEMPLATE = "Problem: {question}\nAnswer 1: {answer}\nAnswer 2: {reference}"
SLOTS = ("question", "answer", "reference")

_BRACKETED = re.compile(r"\[\[\s*(YES|NO)\s*\]\]", re.IGNORECASE)
_WORD = re.compile(r"\b(YES|NO)\b", re.IGNORECASE)


def check_template(template: str) -> None:
    """Raise unless ``template`` uses the slots ``{question}``, ``{answer}``, ``{reference}`` and no other.

    Raises:
        ValueError: Naming the missing or unknown slot.
    """
    found = set(re.findall(r"(?<!\{)\{(\w*)\}(?!\})", template))
    missing, unknown = set(SLOTS) - found, found - set(SLOTS)
    if missing or unknown:
        raise ValueError(
            f"judge.template must use the slots {{question}}, {{answer}} and {{reference}} "
            f"(missing: {sorted(missing)}, unknown: {sorted(unknown)}); write literal braces as {{{{ }}}}"
        )


def build_messages(
    template: str, system_prompt: str | None, question: str, references: list[str], answer: str
) -> Messages:
    """The chat request of one judgement (several references are joined with `` | ``)."""
    user = template.format(question=question, answer=answer, reference=" | ".join(references))
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": user}
    ]


def parse_verdict(reply: str) -> float | None:
    """1.0 / 0.0 from the judge's reply, or ``None`` when it states neither.

    The last ``[[YES]]`` / ``[[NO]]`` wins; without one, the last standalone ``yes`` / ``no`` word.
    """
    found = _BRACKETED.findall(reply) or _WORD.findall(reply)
    if not found:
        return None
    return 1.0 if found[-1].upper() == "YES" else 0.0
