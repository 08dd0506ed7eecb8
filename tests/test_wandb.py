"""``logger=wandb`` offline: run files in the run directory, the resolved config and LongAct metrics logged.

The offline ``.wandb`` file is a LevelDB-style log of ``wandb_internal_pb2.Record`` protobufs; :func:`records`
reads it the way ``wandb sync`` does, so the checks see exactly what a sync would upload. Since wandb 0.2x
the file is written by a separate service process that may still be flushing when ``wandb.finish()``
returns, so :func:`logged` waits for the run's closing ``exit`` record (``wandb sync`` needs it too).
"""

import csv
import json
import time

import pytest
import yaml

from longact_pl.train import run
from tests.helpers import compose_train

wandb = pytest.importorskip("wandb")

PARITY = "data.reward._target_=tests.helpers.ParityReward"
MASK = ["masking=saliency", "masking.refresh_every=1", "masking.calib_samples=1"]
BLOCK, HEADER = 32768, 7  # LevelDB log block size; record header: crc32 (4), length (2), type (1)


def records(path):
    """Every protobuf record of an offline ``.wandb`` file."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    if len(data) < HEADER:  # the service has not written the header yet
        return
    assert data[:4] == b":W&B", "not a W&B transaction log"
    pos, chunk = HEADER, b""  # the file header (magic, version) fills the first 7 bytes of block 0
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # block trailer: zero padding
            pos += BLOCK - pos % BLOCK
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if pos + HEADER + length > len(data):  # a record still being written
            return
        chunk += data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind in (1, 4):  # FULL or LAST fragment
            record = pb.Record()
            record.ParseFromString(chunk)
            yield record
            chunk = b""


def closed_records(path, timeout=60.0):
    """The records of a finished offline run, once its ``exit`` record is on disk (waits ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while True:
        found = list(records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in found):
            return found
        assert time.monotonic() < deadline, f"{path} has no exit record after {timeout} s: run not closed"
        time.sleep(0.2)


def logged(run_dir):
    """(config, history rows) of the run's single offline W&B run."""
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    files = list(runs[0].glob("run-*.wandb"))
    assert len(files) == 1
    config, history = {}, []
    for record in closed_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})  # fmt: skip
    return config, history


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield
    wandb.finish()


def test_wandb_offline_logs_config_and_mask_drift(tmp_path, offline):
    cfg = compose_train(
        tmp_path, "logger=wandb", PARITY, *MASK, "trainer.max_steps=1", "validate_before_training=true"
    )
    run(cfg, tmp_path)
    wandb.finish()  # flush the offline run (the process would do it at exit)
    config, history = logged(tmp_path)
    # the resolved config, exactly as config.yaml holds it
    resolved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert {k: v for k, v in config.items() if not k.startswith("_")} == resolved
    assert config["masking"]["refresh_every"] == 1 and config["module"]["optimizer"]["lr"] == 1e-3
    # the mask drift of the refresh after step 1 reached W&B with the value metrics.csv has
    with open(tmp_path / "metrics.csv") as f:
        csv_rows = [r for r in csv.DictReader(f) if r.get("mask/jaccard")]
    wandb_rows = [h for h in history if "mask/jaccard" in h]
    assert len(csv_rows) == len(wandb_rows) == 1
    for key in ("mask/jaccard", "mask/l1_share", "mask/jaccard_q_proj", "mask/jaccard_k_proj"):
        assert wandb_rows[0][key] == pytest.approx(float(csv_rows[0][key]), rel=1e-6), key
    assert 0.0 <= wandb_rows[0]["mask/jaccard"] <= 1.0
    assert any("train/reward_mean" in h for h in history) and any("val/acc" in h for h in history)


@pytest.mark.slow
def test_each_run_of_a_process_gets_its_own_wandb_run(tmp_path, offline):
    for name in ("a", "b"):
        run(compose_train(tmp_path / name, "logger=wandb", PARITY, "trainer.max_steps=1"), tmp_path / name)
    wandb.finish()
    assert logged(tmp_path / "a")[0]["seed"] == logged(tmp_path / "b")[0]["seed"] == 42


def test_a_resumed_run_continues_its_wandb_run(tmp_path, offline):
    common = ["logger=wandb", PARITY, "callbacks.model_checkpoint.every_n_train_steps=1"]
    run(compose_train(tmp_path, *common, "trainer.max_steps=1"), tmp_path)
    wandb.finish()
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    run(compose_train(tmp_path, *common, "trainer.max_steps=2", f"ckpt_path={ckpt}"), tmp_path)
    wandb.finish()
    files = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) >= 1 and len({f.stem for f in files}) == 1, files  # run-<id>.wandb: one id
    rewards = []
    for f in files:
        for record in closed_records(f):
            if record.WhichOneof("record_type") == "history":
                items = {
                    i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item
                }
                rewards += [items["train/reward_mean"]] if "train/reward_mean" in items else []
    assert len(rewards) == 2  # step 1 before the resume, step 2 after it, in the same run
