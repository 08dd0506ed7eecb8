"""The bucket stream of a weight push, end to end without vLLM: a fake engine call runs the workers' side.

``push_buckets`` calls ``rpc("load_weights_stream", args=(address,))``; here that call connects like a worker
and collects what ``vllm_worker.iter_stream`` yields, so the trainer's and the workers' code both run.
"""

import socket
import threading

import pytest
import torch

from longact_pl.rollout.vllm_worker import iter_stream
from longact_pl.rollout.weight_push import iter_weights, largest_tensor_bytes, push_buckets, push_file


class FakeWorkers:
    """``collective_rpc`` of ``n`` workers that receive the stream (and record each bucket's size)."""

    def __init__(self, n: int = 1, fail_after: int | None = None) -> None:
        self.n, self.fail_after = n, fail_after
        self.received: list[dict[str, torch.Tensor]] = []

    def __call__(self, method: str, args: tuple) -> list[int]:
        assert method == "load_weights_stream"
        results: list[int] = [0] * self.n
        errors: list[BaseException] = []

        def worker(i: int) -> None:
            got: dict[str, torch.Tensor] = {}
            try:
                conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                conn.connect(args[0])
                for name, tensor in iter_stream(conn):
                    if self.fail_after is not None and len(got) == self.fail_after:
                        raise RuntimeError("worker died")
                    got[name] = tensor
                conn.close()
            except BaseException as err:  # noqa: BLE001 - handed to the caller like vLLM does
                errors.append(err)
            self.received.append(got)
            results[i] = len(got)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(self.n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results


def _model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(64, 32), torch.nn.Linear(32, 64), torch.nn.LayerNorm(64))
    model[1].weight = torch.nn.Parameter(torch.randn(64, 32))
    model.register_buffer("steps", torch.tensor([3], dtype=torch.long))  # a non-float buffer keeps its dtype
    return model


@pytest.mark.parametrize("workers", [1, 2])
def test_every_tensor_arrives_cast_in_bounded_buckets(workers):
    model = _model()
    rpc = FakeWorkers(workers)
    # in order: buffer 8 B (int64), embedding 4096 B, linear 4096 + 128 B, norm 128 + 128 B (bf16)
    stats = push_buckets(rpc, iter_weights(model), torch.bfloat16, workers, bucket_bytes=4096)
    want = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    assert stats.tensors == len(want) == 6
    assert stats.bytes == sum(t.numel() * t.element_size() for t in want.values())
    # [buffer], [embedding], [linear.weight], [linear.bias, norm.weight, norm.bias]: none over 4 KiB
    assert stats.segment_bytes == 4096 and stats.buckets == 4
    for got in rpc.received:
        assert got.keys() == want.keys()
        for name, tensor in want.items():
            assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name


def test_a_tensor_larger_than_the_bucket_gets_a_segment_of_its_size():
    model = _model()
    largest = largest_tensor_bytes(model, torch.float32)
    assert largest == 64 * 32 * 4
    stats = push_buckets(
        FakeWorkers(), iter_weights(model), None, 1, bucket_bytes=1000, largest_bytes=largest
    )
    assert stats.segment_bytes == largest and stats.buckets == 4


def test_tied_weights_are_sent_once():
    model = torch.nn.Sequential(torch.nn.Embedding(8, 4), torch.nn.Linear(4, 8, bias=False))
    model[1].weight = model[0].weight
    rpc = FakeWorkers()
    stats = push_buckets(rpc, iter_weights(model), None, 1, bucket_bytes=1 << 20)
    assert stats.tensors == 1 and list(rpc.received[0]) == ["0.weight"]


def test_a_failing_worker_raises_instead_of_hanging():
    weights = iter_weights(_model())
    with pytest.raises(RuntimeError, match="worker died"):
        push_buckets(FakeWorkers(fail_after=2), weights, torch.bfloat16, 1, bucket_bytes=4096)


def test_file_fallback_loads_the_same_weights(tmp_path):
    model = _model()
    seen = {}

    def rpc(method, args):
        from longact_pl.rollout.vllm_worker import iter_safetensors

        assert method == "load_weights_file" and args[0].startswith(str(tmp_path))
        seen.update(iter_safetensors(args[0]))

    stats = push_file(rpc, iter_weights(model), torch.bfloat16, str(tmp_path))
    assert stats.buckets == 1 and stats.tensors == 6 and not list(tmp_path.iterdir())  # file removed after
    assert torch.equal(seen["1.weight"], model[1].weight.detach().to(torch.bfloat16))
