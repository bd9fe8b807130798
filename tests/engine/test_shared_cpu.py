"""``bench speed --shared-cpu``: each wait policy is timed in its own process on the CPU as found and
beside one busy process the benchmark starts (and stops), and the table's ratios come from those times."""
from __future__ import annotations

import subprocess

import pytest

from engine.evaluation import shared_cpu


@pytest.fixture
def started(monkeypatch) -> list[subprocess.Popen]:
    """Every process started from here on (subprocess.run starts its children with Popen too)."""
    processes: list[subprocess.Popen] = []
    popen = subprocess.Popen

    def watched(*args, **kwargs):
        processes.append(popen(*args, **kwargs))
        return processes[-1]

    monkeypatch.setattr(subprocess, "Popen", watched)
    return processes


@pytest.mark.slow
def test_every_wait_policy_is_timed_in_its_own_process_with_and_without_a_busy_process(started):
    report = shared_cpu.run_shared_cpu(model=None, preset="tiny", image_size=32, slices=2, steps=1, repeats=2)
    assert [(r["load"], r["policy"]) for r in report["rows"]] == [
        (load, key) for load in ("as found", "one busy process added") for key in ("default", "short spin", "passive")]
    busy = [p for p in started if p.args[-1] == shared_cpu.BUSY_LOOP]
    assert len(busy) == 1 and busy[0].poll() is not None                # started for the busy rows, then stopped
    runs = [p for p in started if p is not busy[0]]
    assert len(runs) == 6 and len({p.pid for p in runs}) == 6            # a fresh process per row
    for row in report["rows"]:
        assert len(row["times_s"]) == 2 and row["threads"] >= 1 and row["median_s"] > 0
    median = {(r["load"], r["policy"]): r["median_s"] for r in report["rows"]}
    assert report["busy_slowdown"]["passive"] == round(median[("one busy process added", "passive")]
                                                       / median[("as found", "passive")], 3)
    assert report["as_found_vs_default"]["short spin"] == round(median[("as found", "short spin")]
                                                                / median[("as found", "default")], 3)
    table = shared_cpu.to_markdown(report)
    assert f"| as found | short spin, GOMP_SPINCOUNT=10000 (main.py's) | {report['rows'][1]['threads']} |" in table
    assert f"×{report['busy_slowdown']['default']:.2f} with OpenMP's default waiting" in table


def test_the_variants_differ_only_by_the_wait_policy_each_run_is_given(monkeypatch):
    """Each run's environment holds the waiting variables its row says and no others, the user's own
    removed (the runs are stood in for; the slow test above starts them)."""
    seen = []

    def fake_run(cmd, env, **kwargs):
        seen.append({k: env[k] for k in shared_cpu.WAIT_VARIABLES if k in env})
        return subprocess.CompletedProcess(cmd, 0, stdout='{"times_s": [1.0], "threads": 2}\n', stderr="")

    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setenv("GOMP_SPINCOUNT", "5")
    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(shared_cpu, "BUSY_LOOP", "pass")                 # nothing to keep busy in this test
    report = shared_cpu.run_shared_cpu(model=None, preset="tiny", image_size=32, slices=1, steps=1, repeats=1,
                                       load=None)
    assert seen == [{}, {"GOMP_SPINCOUNT": "10000"}, {"OMP_WAIT_POLICY": "PASSIVE"}] * 2
    assert report["busy_slowdown"] == {"default": 1.0, "short spin": 1.0, "passive": 1.0}
    assert report["as_found_vs_default"] == {"short spin": 1.0, "passive": 1.0}
    assert "load average as found: not known" in shared_cpu.to_markdown(report)       # a system without one


def test_a_failed_run_stops_the_busy_process_and_says_which_run(monkeypatch, started):
    def run(cmd, env, **kwargs):
        failing = env.get("OMP_WAIT_POLICY") == "PASSIVE" and len(started) == 1   # the busy row's
        return subprocess.CompletedProcess(cmd, 1 if failing else 0, stderr="RuntimeError: out of memory\n",
                                           stdout="" if failing else '{"times_s": [1.0], "threads": 2}\n')

    monkeypatch.setattr(subprocess, "run", run)
    with pytest.raises(RuntimeError, match=r"\(one busy process added, passive, OMP_WAIT_POLICY=PASSIVE\) failed \(exit 1\): RuntimeError: "
                                           "out of memory"):
        shared_cpu.run_shared_cpu(model=None, preset="tiny", image_size=32, slices=1, steps=1, repeats=1)
    assert len(started) == 1 and started[0].poll() is not None            # the busy loop was stopped
