"""How many rows of logits the LM head's forward works on at a time (no torch: the memory plan reads it).

The head (:class:`longact_pl.ops.chunked._TargetLogSoftmax`) upcasts, log-softmaxes and exponentiates a
block of rows of ``[t, V]`` logits at a time, and the memory plan counts that scratch once. On CPU the
block is small, so those passes stay in cache and no fresh multi-megabyte buffer page-faults. On an
accelerator (a caching allocator; a cost per kernel launch) it is large, so a 1024-token chunk of a 152k
vocabulary takes 7 blocks, not 512.
"""

# Bytes of float32 scratch per block: the upcast, log-softmax and softmax, 3 x 4 B x V per row (on CPU
# 2.4 MiB for a 49k vocabulary at 4 rows, inside the L2/L3 cache; elsewhere 147 rows of a 152k vocabulary)
CPU_HEAD_BLOCK_BYTES = 4 << 20
ACCELERATOR_HEAD_BLOCK_BYTES = 256 << 20


def rows_per_block(vocab: int, device_type: str) -> int:
    """Rows per forward block of the head on a ``device_type`` (``cpu``, ``cuda``, ...; at least 1)."""
    budget = CPU_HEAD_BLOCK_BYTES if device_type == "cpu" else ACCELERATOR_HEAD_BLOCK_BYTES
    return max(1, budget // (12 * vocab))


def head_scratch_bytes(vocab: int, tokens: float, device_type: str) -> int:
    """Bytes of the forward's block scratch for ``tokens`` rows (a block, or fewer rows when there are)."""
    return int(min(rows_per_block(vocab, device_type), max(tokens, 1)) * 12 * vocab)
