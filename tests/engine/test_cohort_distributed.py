"""``cohort`` under ``torchrun`` (2 CPU processes, gloo): the items are dealt out by rank, each rank
writes only its own, rank 0 merges the manifest, and the outputs equal one process's voxel for voxel."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from test_cohort import head, records
from training_support import ROOT, subprocess_env

import engine.io as io
from engine.cohort import manifest
from main import main


@pytest.mark.slow
def test_two_ranks_write_what_one_process_writes(tmp_path, capsys, one_torch_thread):
    from engine.inference.random_model import write_random_model

    model = write_random_model(tmp_path / "model", routes=(("T1", "T2"),), image_size=32,
                               metadata={"inference_defaults": {"steps": 1}})
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        io.save(head("T1", seed), tmp_path / "study" / name / "t1.nii.gz")
    common = [str(tmp_path / "study"), "--target", "T2", "--model", str(model), "--device", "cpu", "--threads", "1"]
    assert main(["cohort", *common, "-o", str(tmp_path / "one"), "--quiet"]) == 0
    capsys.readouterr()

    # --standalone: torchrun's own rendezvous picks a free port (no window between choosing and binding one)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / "main.py"),
           "cohort", *common, "-o", str(tmp_path / "two"), "--json"]
    proc = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    summaries = [e for e in events if e["event"] == "summary"]
    assert sorted(e["mine"] for e in events if e["event"] == "start") == [1, 2]        # 3 items dealt to 2 ranks
    assert len(summaries) == 1 and summaries[0]["world_size"] == 2 and summaries[0]["succeeded"] == 3

    state = records(tmp_path / "two")
    assert {r["status"] for r in state.values()} == {"done"} and {r["rank"] for r in state.values()} == {0, 1}
    assert not list((tmp_path / "two").glob(manifest.PART_GLOB))
    assert state.keys() == records(tmp_path / "one").keys()
    for record in state.values():
        two = io.load(tmp_path / "two" / record["output"]).array
        np.testing.assert_array_equal(two, io.load(tmp_path / "one" / record["output"]).array)
