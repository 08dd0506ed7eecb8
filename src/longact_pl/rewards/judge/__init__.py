"""The LLM judge: one :class:`~longact_pl.rewards.judge.judge.LLMJudge` over interchangeable back ends."""
