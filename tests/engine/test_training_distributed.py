"""The same ``train`` command under ``torchrun`` (2 processes, gloo on CPU): ranks share the global
batch, average gradients, end with identical weights, and match one process with the same global
batch (every sample's noise, timestep and dropout come from its global index, not its rank) —
also with the decoder layers sharded by FSDP."""
from __future__ import annotations

import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from training_support import PX, ROOT, phantom_data, records, step_losses, subprocess_env, tiny_config

from engine.training.trainer import train

STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(data, out, *extra: str) -> list[dict]:
    env = subprocess_env()
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(ROOT / "main.py"), "train", "--data", str(data), "--stage",
           "generation", "--out", str(out), "--steps", str(STEPS), "--batch-size", "1", "--image-size", str(PX),
           "--lr", "1e-3", "--threads", "1", "--preview-every", "0", "--eval-samples", "1",
           "--checkpoint-seconds", "0", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return records(proc.stdout)                     # rank 0 alone prints records


@pytest.mark.slow
def test_two_process_stage_two_runs_agree_across_ranks_and_with_one_process(tmp_path):
    data = phantom_data(tmp_path / "data")
    single: list[dict] = []
    train(tiny_config(data, tmp_path / "single", "generation", steps=STEPS, batch_size=2, lr=1e-3, threads=1,
                      eval_samples=1), single.append)
    one_weights = load_file(str(tmp_path / "single" / "model.safetensors"))
    for name, extra in (("ddp", ()), ("fsdp", ("--fsdp",))):
        recs = _torchrun(data, tmp_path / name, *extra)
        assert recs[0]["event"] == "start" and recs[0]["world_size"] == 2
        assert recs[0]["fsdp_blocks"] == (4 if extra else 0)          # the tiny preset's decoder layers
        done = recs[-1]
        assert done["event"] == "done" and done["replicas_agree"] is True, name
        assert len(done["replica_checksums"]) == 2 and done["replica_checksums"][0] == done["replica_checksums"][1]
        assert sum(r["event"] == "done" for r in recs) == 1
        for step, loss in step_losses(single).items():
            assert step_losses(recs)[step] == pytest.approx(loss, rel=1e-4, abs=1e-6), name
        weights = load_file(str(tmp_path / name / "model.safetensors"))
        assert weights.keys() == one_weights.keys()
        for key, value in one_weights.items():
            torch.testing.assert_close(weights[key], value, atol=2e-5, rtol=1e-4, msg=f"{name}: {key}")


@pytest.mark.parametrize("rank, order", [(0, ["block", "barrier"]), (1, ["barrier", "block"])])
def test_main_first_runs_the_block_on_rank_0_before_the_others(monkeypatch, rank, order):
    from engine.training.distributed import Distributed

    ctx = Distributed(rank=rank, world_size=2)
    seen: list[str] = []
    monkeypatch.setattr(Distributed, "barrier", lambda self: seen.append("barrier"))
    with ctx.main_first():
        seen.append("block")
    assert seen == order
