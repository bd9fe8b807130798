"""``bench speed --cohort N``: the cohort rows time real ``cohort`` commands, one process and two
torchrun ranks with the threads asked, each synthesizing every copy, and print volumes per minute
from those times."""
from __future__ import annotations

import pytest

from engine.evaluation import cohort_speed


@pytest.mark.slow
def test_the_cohort_row_times_one_process_and_two_ranks():
    report = cohort_speed.run_cohort_speed(1, preset="tiny", image_size=32, steps=1, device="cpu",
                                           runs=[(1, 2), (2, 1)])
    one, two = report["rows"]
    assert (one["processes"], two["processes"]) == (1, 2) and one["volumes"] == two["volumes"] == 1
    assert (one["threads_per_process"], two["threads_per_process"]) == (2, 1)
    for row in report["rows"]:
        assert row["threads_used"]["torch"] == row["threads_per_process"]          # the bound held (rank 0's)
        assert 0 < row["loop_s"] < row["wall_s"]
        assert row["volumes_per_minute"] == pytest.approx(60 / row["wall_s"], rel=0.01)
    table = cohort_speed.to_markdown(report)
    assert f"| torchrun | 2 × {two['threads_per_process']} | 1 | {two['wall_s']:.1f} |" in table
