"""How many rows of logits the LM head's forward works on at a time (no torch: the memory plan reads it).

The head (:class:`longact_pl.ops.chunked._TargetLogSoftmax`) upcasts, log-softmaxes and exponentiates a few
rows of ``[t, V]`` logits at a time so that those passes stay in the CPU's cache; the memory plan counts
that scratch once.
"""

# Bytes of float32 scratch per block: the upcast, log-softmax and softmax (3 x 4 B x V per row; 2.4 MiB for
# a 49k vocabulary at 4 rows, inside a CPU's L2/L3 cache)
HEAD_BLOCK_BYTES = 4 << 20


def rows_per_block(vocab: int) -> int:
    """Rows per forward block of the head (at least 1)."""
    return max(1, HEAD_BLOCK_BYTES // (12 * vocab))
