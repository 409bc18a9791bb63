"""Routing and link timing from shared physics."""

import pytest

from mesh.link import LinkTiming
from mesh.orbit import Constellation, iso_to_jd
from mesh.presets import demo
from mesh.routing import Router
from mesh.topology import Topology


@pytest.fixture(scope="module")
def router():
    cfg = demo()
    return Router(Topology(Constellation(list(cfg.shells), iso_to_jd(cfg.epoch))))


def test_next_hops_follow_the_shortest_path(router):
    for dst in range(1, 24):
        path, _ = router.path(0, dst, 10.0)
        here = 0
        walked = [0]
        while here != dst:
            here = router.next_hop(here, dst, 10.0)
            walked.append(here)
            assert len(walked) <= 24, "routing loop"
        assert walked == path


def test_no_next_hop_to_self(router):
    assert router.next_hop(3, 3, 0.0) is None


def test_snapshots_are_cached_per_step(router):
    assert router.snapshot(5.2) is router.snapshot(5.9)
    assert router.snapshot(5.2) is not router.snapshot(6.1)


def test_link_due_time():
    timing = LinkTiming(bandwidth_bps=1e9)
    assert timing.serialization_s(1250) == pytest.approx(1e-5)
    assert timing.due(100.0, 0.0065, 1250) == pytest.approx(100.00651)
