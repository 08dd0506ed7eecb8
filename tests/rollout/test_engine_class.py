"""The vLLM engine is told the model's own class, also when FSDP2 has wrapped it."""

from torch.distributed.fsdp import FSDPModule

from longact_pl.models.tiny import tiny_llama
from longact_pl.rollout.vllm_engine import model_class


def test_model_class_sees_through_fully_shards_subclass():
    model = tiny_llama(seed=0).model
    own = type(model)
    # what fully_shard does to the root module: a dynamic subclass FSDP<Class>(FSDPModule, <Class>)
    model.__class__ = type(f"FSDP{own.__name__}", (FSDPModule, own), {})
    assert type(model).__name__ == "FSDPLlamaForCausalLM"
    assert model_class(model) is own
