"""Pinning a role's process to CPUs (``rollout.cpu_affinity``, ``learner.cpu_affinity``) and the default
layout that picks them (``cluster.cpu_layout``)."""

import multiprocessing as mp
import os
import threading

import pytest

from actors.cluster import pin_cpus
from tagpr.config import load_config
from tagpr.errors import ConfigError, TagPRError
from tagpr.rl.placement import role_cores


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


def test_default_layout_gives_the_rollout_its_cores_and_the_learner_the_rest():
    # the async benchmark's layout: two cores, one rollout worker, one learner worker
    assert role_cores([1, 0], 2, rollout_workers=1, rollout_cpus=1, learner_workers=1) == ([0], [1])
    # sixteen cores, two workers of 1.5 CPUs each: two cores apiece, the learner the other twelve
    rollout, learner = role_cores(range(16), 16, rollout_workers=2, rollout_cpus=1.5, learner_workers=2)
    assert rollout == [0, 1, 2, 3] and learner == list(range(4, 16))


@pytest.mark.parametrize("cores,logical,workers,cpus,learners", [
    ([0, 1], 5, 1, 1, 1),    # the demo: five logical CPUs on two cores share them on purpose
    ([0, 1], 2, 2, 1, 1),    # no core left for the learner
    ([0, 1, 2], 3, 1, 1, 3),  # fewer cores than learner workers after the rollout's
    ([0, 1], 2, 1, 0, 1),    # a worker reserving no CPU (a GPU engine): nothing to pin it to
])
def test_no_layout_where_the_node_lacks_the_cores(cores, logical, workers, cpus, learners):
    assert role_cores(cores, logical, workers, cpus, learners) is None


def test_cpu_layout_is_auto_or_off():
    assert load_config(None, []).cluster.cpu_layout == "auto"
    with pytest.raises(ConfigError) as e:
        load_config(None, ["cluster.cpu_layout=on"])
    assert "cpu_layout" in str(e.value.key)
