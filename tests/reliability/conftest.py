"""The reliability suite shares the integration suite's cluster fixtures (one local Ray cluster per
test session, Serve on a free loopback port)."""

from tests.integration.conftest import ray_cluster, serve_port, tiny_policy, wait_for  # noqa: F401
