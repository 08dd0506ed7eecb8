"""Ulysses sequence parallelism: each rank of a group holds 1/N of every sequence.

``comm``: the group and its collectives; ``attention``: the attention wrapper; ``logprobs``: the log-prob
passes split over the group (import it from its module: it depends on the packed and shared-prompt passes).
"""

from longact_pl.ops.sequence_parallel.attention import check_heads, enable_ulysses, kv_repeats
from longact_pl.ops.sequence_parallel.comm import SPGroup, heads_to_seq, seq_to_heads, sum_over_group

__all__ = [
    "SPGroup",
    "check_heads",
    "enable_ulysses",
    "heads_to_seq",
    "kv_repeats",
    "seq_to_heads",
    "sum_over_group",
]
