"""``make bench BENCH=...``: a misspelt benchmark name stops the run instead of running nothing."""

import pytest

from benchmarks import run


def test_unknown_benchmark_name_is_rejected_with_the_known_names(capsys):
    with pytest.raises(SystemExit) as exc:
        run.main(["sft", "rolout"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown benchmark(s) rolout" in err
    assert "rollout" in err and "sft" in err


def test_meets_reads_the_target_comparison():
    assert run.meets(0.95, ">= 0.95") and not run.meets(0.94, ">= 0.95")
    assert run.meets(0.2, "<= 0.25") and not run.meets(1.0, "< 1")
