"""Pinning a role's process to CPUs (``rollout.cpu_affinity``, ``learner.cpu_affinity``)."""

import multiprocessing as mp
import os
import threading

import pytest

from actors.cluster import pin_cpus
from tagpr.config import load_config
from tagpr.errors import ConfigError, TagPRError


def _pin_and_report(cpus, out):
    waiting = threading.Event()
    started = threading.Thread(target=waiting.wait)  # a thread that exists before pinning
    started.start()
    pin_cpus(cpus, "learner.cpu_affinity")
    later = threading.Thread(target=lambda: out.put(("later", sorted(os.sched_getaffinity(0)))))
    later.start()
    later.join()
    out.put(("started", sorted(os.sched_getaffinity(started.native_id))))
    waiting.set()


def test_every_thread_of_the_process_is_pinned():
    cpu = min(os.sched_getaffinity(0))
    out = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=_pin_and_report, args=([cpu], out))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    assert dict(out.get() for _ in range(2)) == {"later": [cpu], "started": [cpu]}


def test_a_cpu_the_host_lacks_is_named():
    with pytest.raises(TagPRError, match=r"rollout.cpu_affinity: CPUs \[4096\]"):
        pin_cpus([4096], "rollout.cpu_affinity")
    pin_cpus(None, "rollout.cpu_affinity")  # no pinning asked: nothing changes
    assert os.sched_getaffinity(0)


@pytest.mark.parametrize("value", ["[]", "[-1]", "[a]"])
def test_bad_affinity_in_config(value):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"rollout.cpu_affinity={value}"])
    assert "cpu_affinity" in str(e.value.key)
