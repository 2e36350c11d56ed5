"""Progress from Ray workers reaches the driver's console through the job's board actor."""

import pytest

from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration


def test_reports_from_a_remote_task_reach_the_follower(ray_cluster):
    import ray

    from actors.progress import BoardFollower, board_name, report

    @ray.remote(num_cpus=0)
    def work(n: int) -> bool:
        import time

        for i in range(1, n + 1):
            report("units", i, n)
            time.sleep(0.3)
        return True

    seen = []
    with BoardFollower(lambda what, done, total: seen.append((what, done, total)), every_s=0.1):
        assert wait_for(lambda: _board_exists(board_name()), timeout=30)
        assert ray.get(work.remote(5), timeout=60)
        assert wait_for(lambda: seen and seen[-1] == ("units", 5, 5), timeout=10)
    assert all(what == "units" and total == 5 for what, _, total in seen)
    assert [d for _, d, _ in seen] == sorted(d for _, d, _ in seen)  # changes arrive in order
    assert len(seen) >= 3  # polled while the task ran, not only at its end
    assert wait_for(lambda: not _board_exists(board_name()), timeout=10)  # the follower removes its board


def test_report_without_a_board_is_dropped(ray_cluster):
    import ray

    from actors.progress import report

    @ray.remote(num_cpus=0)
    def lonely() -> str:
        report("units", 1, 2)
        return "ok"

    assert ray.get(lonely.remote(), timeout=60) == "ok"


def _board_exists(name: str) -> bool:
    import ray

    try:
        ray.get_actor(name)
        return True
    except ValueError:
        return False
