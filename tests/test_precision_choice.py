"""``trainer.precision=auto``: the rule for every (device, capability) case, the probes, and one real run."""

import csv
import logging
from types import MappingProxyType

import lightning as L
import pytest
import torch
import yaml

from longact_pl import precision_choice as pc
from longact_pl.precision_choice import Bf16Support, choose_precision, resolve_precision
from longact_pl.train import run
from tests.helpers import compose_train

PARITY_REWARD = "data.reward._target_=tests.helpers.ParityReward"


def _probe(native: bool, calls: list | None = None):
    def probe(device: str) -> Bf16Support:
        if calls is not None:
            calls.append(device)
        return Bf16Support(native, "stub")

    return probe


@pytest.mark.parametrize(
    ("device", "native", "expected"),
    [
        ("cuda", True, "bf16-mixed"),  # Ampere and later
        ("cuda", False, "32-true"),  # V100 / T4: bf16 emulated; fp16-mixed is never picked automatically
        ("cpu", True, "bf16-mixed"),  # AMX or AVX512_BF16
        ("cpu", False, "32-true"),  # AVX-512F without AVX512_BF16: emulated bf16 is 2.6x slower
        ("mps", False, "32-true"),
    ],
)
def test_auto_picks_bf16_only_where_it_is_native(device, native, expected):
    calls = []
    choice = resolve_precision("auto", device, _probe(native, calls))
    assert (choice.precision, choice.requested, choice.device) == (expected, "auto", device)
    assert calls == [device]  # the probe was asked about this device
    assert ("has native bf16" if native else "has no native bf16") in choice.reason


@pytest.mark.parametrize("explicit", ["bf16-mixed", "32-true", "16-mixed", "bf16-true"])
@pytest.mark.parametrize("native", [True, False])
def test_an_explicit_precision_wins_and_asks_no_probe(explicit, native):
    calls = []
    choice = resolve_precision(explicit, "cpu", _probe(native, calls))
    assert choice.precision == explicit and calls == [] and "explicitly" in choice.reason


@pytest.mark.parametrize(
    ("accelerator", "cuda", "expected"),
    [("cpu", True, "cpu"), ("gpu", False, "cuda"), ("cuda", False, "cuda"), ("auto", True, "cuda"),
     ("auto", False, "cpu"), ("tpu", False, "tpu")],
)  # fmt: skip
def test_the_device_is_the_one_lightning_will_use(monkeypatch, accelerator, cuda, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pc.device_of(accelerator) == expected


@pytest.mark.parametrize(
    ("caps", "native", "detail"),
    [
        ({"avx512_bf16": True, "amx_bf16": False}, True, "avx512_bf16"),  # AMD Zen 4, Cooper Lake
        ({"avx512_bf16": True, "amx_bf16": True}, True, "amx_bf16+avx512_bf16"),  # Sapphire Rapids
        (
            {"avx512_f": True, "avx512_bf16": False, "amx_bf16": False},
            False,
            "no AMX",
        ),  # Skylake/Icelake Xeon
        ({"bf16": True, "sve_bf16": True}, True, "bf16+sve_bf16"),  # Graviton 3
    ],
)
def test_the_cpu_probe_reads_torchs_capabilities(monkeypatch, caps, native, detail):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: MappingProxyType(caps))
    found = pc.cpu_bf16_support()
    assert found.native == native and found.detail.startswith(detail)


def test_the_cpu_probe_falls_back_to_cpuinfo_flags(monkeypatch, tmp_path):
    """Older torch (no ``get_capabilities``, no private probes): the kernel's flags decide."""
    monkeypatch.delattr(torch.cpu, "get_capabilities")
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    info = tmp_path / "cpuinfo"
    read = pc.cpuinfo_flags
    monkeypatch.setattr(pc, "cpuinfo_flags", lambda: read(str(info)))
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512bw\n")
    assert not pc.cpu_bf16_support().native
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f amx_tile amx_bf16\n")
    assert pc.cpu_bf16_support() == Bf16Support(True, "amx_bf16")


def test_the_cuda_probe_does_not_count_emulated_bf16(monkeypatch):
    seen = {}

    def is_bf16_supported(including_emulation=True):
        seen["emulation"] = including_emulation
        return False

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert pc.cuda_bf16_support() == Bf16Support(False, "Tesla T4, compute capability 7.5")
    assert seen == {"emulation": False}


def test_choose_precision_rewrites_the_config_and_records_why(tmp_path, caplog):
    cfg = compose_train(tmp_path, "trainer.precision=auto", "trainer.accelerator=cpu")
    with caplog.at_level(logging.INFO, logger="longact_pl.precision_choice"):
        choose_precision(cfg, probe=_probe(False))
    assert cfg.trainer.precision == "32-true"
    assert cfg.precision_choice.requested == "auto" and "no native bf16" in cfg.precision_choice.reason
    assert [r.getMessage() for r in caplog.records] == [
        "trainer.precision=auto -> 32-true: cpu has no native bf16 (stub): bf16 autocast would be emulated "
        "and slower than fp32 (fp16-mixed is never chosen automatically)"
    ]


def test_auto_is_the_default():
    cfg = compose_train("/nonexistent", tiny=False)
    assert cfg.trainer.precision == "auto"


class RecordPrecision(L.Callback):
    """Records the precision the Lightning trainer ran with and the dtype of the policy's matmuls."""

    seen: dict = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        x = torch.ones(1, 4)
        with trainer.precision_plugin.forward_context():
            RecordPrecision.seen = {"precision": trainer.precision, "matmul": (x @ x.T).dtype}


def test_a_real_run_resolves_auto_records_it_and_trains(tmp_path):
    """On this machine: ``auto`` resolves by the real probe, the trainer runs it, config.yaml says why."""
    cfg = compose_train(
        tmp_path, "trainer.precision=auto", "trainer.max_steps=1", "+trainer.limit_val_batches=0",
        PARITY_REWARD,
        "+callbacks.record._target_=tests.test_precision_choice.RecordPrecision", "algo.kl_coef=0.04",
        "module.kl_fp32_check_rows=2", "callbacks.model_checkpoint.save_last=false",
    )  # fmt: skip
    expected = resolve_precision("auto", "cpu", pc.default_probe)
    run(cfg, tmp_path)
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["trainer"]["precision"] == expected.precision
    assert saved["precision_choice"] == {
        "precision": expected.precision, "requested": "auto", "device": "cpu", "reason": expected.reason
    }  # fmt: skip
    bf16 = expected.precision == "bf16-mixed"
    assert RecordPrecision.seen == {
        "precision": expected.precision, "matmul": torch.bfloat16 if bf16 else torch.float32
    }  # fmt: skip
    with open(tmp_path / "metrics.csv") as f:
        (row,) = [r for r in csv.DictReader(f) if r.get("train/reward_mean")]
    assert float(row["train/grad_norm"]) > 0  # it trained (an optimizer step with a gradient)
    # the policy equals the reference at step 1: in fp32 their KL is ~0 on the checked rows
    assert float(row["train/kl_fp32"]) < 1e-6 and float(row["train/kl_autocast"]) >= 0
