"""vLLM worker extension: reload the engine's weights from a safetensors file written by the trainer.

vLLM mixes this class into its worker (``LLM(worker_extension_cls=...)``); its methods run inside the
worker processes and are called with ``llm.collective_rpc(name, args=...)``. It imports no vLLM module
itself (only ``self.model_runner``, set by vLLM), so ``rollout/vllm.py`` stays the one module importing vLLM.

Why a file: tensors passed as RPC arguments arrive as nested lists, and ``model.load_weights`` called
directly skips the CPU backend's weight repacking. ``model_runner.reload_weights(weights_iterator=...)``
does the layer-wise reload (including repacking) for every backend.

Tied embeddings: the checkpoint has no ``lm_head.weight`` then, so the reload leaves the LM head's kernel
(on CPU a packed copy of the *old* embedding) in place. After each reload the head is tied to the new
embedding again and its weight processing re-run.
"""

from __future__ import annotations

from collections.abc import Iterator

from safetensors import safe_open
from torch import Tensor


def iter_safetensors(path: str) -> Iterator[tuple[str, Tensor]]:
    """Yield ``(name, tensor)`` pairs from a safetensors file, one tensor in memory at a time."""
    with safe_open(path, framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 (safe_open handles are not iterable)
            yield name, f.get_tensor(name)


class WeightSyncExtension:
    """Methods added to every vLLM worker (``self`` is the worker)."""

    def load_weights_file(self, path: str) -> int:
        """Load Hugging Face-named weights from ``path`` into the running model, in place.

        Args:
            path: A safetensors file with the policy's ``state_dict`` names (checkpoint format).

        Returns:
            The number of tensors in the file.
        """
        count = [0]

        def counted() -> Iterator[tuple[str, Tensor]]:
            for item in iter_safetensors(path):
                count[0] += 1
                yield item

        self.model_runner.reload_weights(weights_iterator=counted())  # type: ignore[attr-defined]
        self._retie_lm_head()
        return count[0]

    def _retie_lm_head(self) -> None:
        """Point a tied LM head at the reloaded embedding and rebuild its kernel (CPU packs it)."""
        config = self.model_config.hf_text_config  # type: ignore[attr-defined]
        if not getattr(config, "tie_word_embeddings", False):
            return
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        modules = dict(model.named_modules())
        head = next((m for n, m in modules.items() if n.split(".")[-1] == "lm_head"), None)
        embed = next((m for n, m in modules.items() if n.split(".")[-1] == "embed_tokens"), None)
        if head is None or embed is None:
            return
        head.weight = embed.weight
        head.quant_method.process_weights_after_loading(head)
