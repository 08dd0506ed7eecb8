"""Ulysses sequence parallelism: each rank of a group holds 1/N of every sequence (see ``logprobs.py``)."""

from longact_pl.ops.sequence_parallel.attention import check_heads, enable_ulysses, kv_repeats
from longact_pl.ops.sequence_parallel.comm import SPGroup, heads_to_seq, seq_to_heads, sum_over_group
from longact_pl.ops.sequence_parallel.logprobs import sp_completion_logprobs, sp_grouped_completion_logprobs

__all__ = [
    "SPGroup",
    "check_heads",
    "enable_ulysses",
    "heads_to_seq",
    "kv_repeats",
    "seq_to_heads",
    "sp_completion_logprobs",
    "sp_grouped_completion_logprobs",
    "sum_over_group",
]
