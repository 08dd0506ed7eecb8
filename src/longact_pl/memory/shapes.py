"""A decoder-only model's shape, read from its config (a ``config.json`` dict): no weights are loaded.

Only the numbers the memory plan needs: widths, layer and head counts, vocabulary, tied embeddings, and
whether attention has Qwen3's per-head ``q_norm`` / ``k_norm`` (they keep extra float32 activations).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# config.json of the models users train (Hugging Face hub, the fields the plan reads)
QWEN3_4B = dict(
    model_type="qwen3", vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
    num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
)  # fmt: skip
QWEN3_8B = dict(
    model_type="qwen3", vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
    num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False,
)  # fmt: skip
SMOLLM2_135M = dict(
    model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
    num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=True,
)  # fmt: skip
# hub ids whose shape is known without a download (a local folder's config.json is read instead)
KNOWN = {
    "Qwen/Qwen3-4B": QWEN3_4B,
    "Qwen/Qwen3-8B": QWEN3_8B,
    "HuggingFaceTB/SmolLM2-135M-Instruct": SMOLLM2_135M,
}


@dataclass(frozen=True)
class ModelShape:
    """What the memory plan needs of a decoder-only transformer.

    Attributes:
        hidden: Residual-stream width H.
        layers: Decoder layers L.
        heads: Query heads.
        kv_heads: Key/value heads (GQA).
        head_dim: Width of one head.
        intermediate: MLP width I (gated: gate, up, down).
        vocab: Embedding / LM-head rows V.
        tied: The LM head is the embedding matrix.
        qk_norm: Per-head RMSNorm of queries and keys (Qwen3).
        name: For the printed plan.
    """

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool = True
    qk_norm: bool = False
    name: str = "model"

    @classmethod
    def from_config(cls, config: dict, name: str | None = None) -> ModelShape:
        """From a ``config.json`` dict (the text config of a multimodal one).

        Raises:
            ValueError: Naming a missing field.
        """
        config = config.get("text_config", config)
        need = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
        missing = [k for k in need if config.get(k) is None]
        if missing:
            raise ValueError(f"model config lacks {missing}: cannot plan memory")
        heads = int(config["num_attention_heads"])
        return cls(
            hidden=int(config["hidden_size"]),
            layers=int(config["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or config["hidden_size"] // heads),
            intermediate=int(config["intermediate_size"]),
            vocab=int(config["vocab_size"]),
            tied=bool(config.get("tie_word_embeddings", True)),
            qk_norm=str(config.get("model_type", "")).startswith("qwen3"),
            name=name or str(config.get("_name_or_path") or config.get("model_type") or "model"),
        )

    @classmethod
    def from_folder(cls, folder: str | Path) -> ModelShape:
        """From ``folder/config.json`` (no weights read)."""
        path = Path(folder) / "config.json"
        return cls.from_config(json.loads(path.read_text()), name=str(folder))

    @property
    def q_width(self) -> int:
        """``heads x head_dim``."""
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        """``kv_heads x head_dim``: one of K or V per token and layer."""
        return self.kv_heads * self.head_dim

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer (projections, MLP, norms)."""
        h = self.hidden
        attention = h * (self.q_width + 2 * self.kv_width) + self.q_width * h
        norms = 2 * h + (2 * self.head_dim if self.qk_norm else 0)
        return attention + 3 * h * self.intermediate + norms

    @property
    def embedding_params(self) -> int:
        """Embedding plus an untied LM head."""
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def params(self) -> int:
        """All parameters (the final norm included)."""
        return self.layers * self.layer_params + self.embedding_params + self.hidden

    @property
    def linear_params(self) -> int:
        """Parameters of the matrices autocast casts (every projection and the LM head, not the embedding)."""
        h = self.hidden
        per_layer = h * (self.q_width + 2 * self.kv_width) + self.q_width * h + 3 * h * self.intermediate
        return self.layers * per_layer + self.vocab * h

    @property
    def largest_param(self) -> int:
        """Elements of the largest single tensor (the embedding, for these models)."""
        return max(self.vocab * self.hidden, self.hidden * self.intermediate)


def shape_of_model_config(model: dict) -> ModelShape | None:
    """The shape of a ``model`` config group (``conf/model/*.yaml`` as a dict); ``None`` when unknown.

    ``tiny_llama`` / ``tiny_qwen3`` are built from their fields (vocabulary: the SmolLM2 tokenizer's 49,152
    unless ``vocab_size``), ``smollm2_135m`` is SmolLM2-135M, ``hf`` reads ``name_or_path/config.json`` of a
    local folder or knows a few hub ids (:data:`KNOWN`).
    """
    target = str(model.get("_target_", ""))
    if target.endswith(("tiny_llama", "tiny_qwen3")):
        hidden, heads = int(model.get("hidden_size", 64)), int(model.get("heads", 4))
        return ModelShape(
            hidden=hidden, layers=int(model.get("num_layers", 2)), heads=heads,
            kv_heads=int(model.get("kv_heads", 2)), head_dim=hidden // heads, intermediate=2 * hidden,
            vocab=int(model.get("vocab_size") or SMOLLM2_135M["vocab_size"]), tied=True,
            qk_norm=target.endswith("qwen3"), name=target.rsplit(".", 1)[-1],
        )  # fmt: skip
    if target.endswith("load_smollm2"):
        return ModelShape.from_config(SMOLLM2_135M, name="SmolLM2-135M")
    path = model.get("name_or_path")
    if not isinstance(path, str) or path == "???":
        return None
    if (Path(path).expanduser() / "config.json").is_file():
        try:
            return ModelShape.from_folder(Path(path).expanduser())
        except (ValueError, OSError, TypeError):  # an unreadable or partial config.json: no plan
            return None
    if path in KNOWN:
        return ModelShape.from_config(KNOWN[path], name=path)
    return None
