"""The pure link model: delay formula, queue, loss statistics, replay."""

import math

import pytest

from mesh.link import Dropped, Emission, LinkEmulator, LinkProfile, LossModel, link_seed


def run(profile, n=10_000, interval=0.001, size=1000, seed=7):
    em = LinkEmulator(profile, seed)
    return [em.transmit(i * interval, size) for i in range(n)]


def binomial_bounds(n, p, z=3.29):  # 99.9% normal approximation
    sd = math.sqrt(n * p * (1 - p))
    return n * p - z * sd, n * p + z * sd


def test_serialization_delay_and_fifo_queueing():
    em = LinkEmulator(LinkProfile(bandwidth_bps=8e6), 1)  # 1 MB/s: 1000 B = 1 ms
    a = em.transmit(0.0, 1000)[0]
    b = em.transmit(0.0, 1000)[0]  # queued behind a
    assert a == Emission(0.0, 0.001) and b.sent_at == pytest.approx(0.001) and b.extra_s == pytest.approx(0.001)


def test_full_transmit_queue_drops():
    em = LinkEmulator(LinkProfile(bandwidth_bps=8e3, queue_frames=3), 1)  # 1 s per frame
    fates = [em.transmit(0.0, 1000) for _ in range(5)]
    assert [isinstance(f, Dropped) for f in fates] == [False, False, False, True, True]
    assert fates[3].cause == "queue_full"
    assert not isinstance(em.transmit(1.5, 1000), Dropped)  # the queue drained


def test_out_of_sight_drops_everything():
    assert all(f == Dropped("out_of_sight") for f in run(LinkProfile(in_sight=False), n=50))


def test_cut_drops_everything():
    assert all(f == Dropped("cut") for f in run(LinkProfile(cut=True), n=100))


@pytest.mark.parametrize("p", [0.01, 0.1, 0.5])
def test_bernoulli_loss_within_binomial_bounds(p):
    n = 20_000
    lost = sum(isinstance(f, Dropped) for f in run(LinkProfile(loss=LossModel(p=p)), n=n))
    lo, hi = binomial_bounds(n, p)
    assert lo <= lost <= hi


def test_gilbert_elliott_rate_and_bursts():
    model = LossModel("gilbert", p_good_to_bad=0.02, p_bad_to_good=0.2, loss_good=0.0, loss_bad=0.8)
    fates = run(LinkProfile(loss=model), n=50_000)
    lost = [isinstance(f, Dropped) for f in fates]
    assert sum(lost) / len(lost) == pytest.approx(model.mean_rate, rel=0.15)
    # bursty: a loss is far more likely right after a loss than on average
    after_loss = sum(b for a, b in zip(lost, lost[1:]) if a) / max(1, sum(lost[:-1]))
    assert after_loss > 3 * model.mean_rate


def test_same_seed_replays_same_fates():
    profile = LinkProfile(loss=LossModel(p=0.2), jitter="normal", jitter_s=0.001, duplicate=0.05, corrupt=0.05)
    assert run(profile, n=2000, seed=42) == run(profile, n=2000, seed=42)
    assert run(profile, n=2000, seed=42) != run(profile, n=2000, seed=43)


def test_link_seed_is_stable_and_directional():
    assert link_seed("demo", "sat-1", "sat-2") == link_seed("demo", "sat-1", "sat-2")
    assert link_seed("demo", "sat-1", "sat-2") != link_seed("demo", "sat-2", "sat-1")


@pytest.mark.parametrize("dist", ["uniform", "normal", "pareto"])
def test_jitter_never_reorders(dist):
    fates = run(LinkProfile(jitter=dist, jitter_s=0.005), n=2000, interval=0.0005)
    releases = [f[0].sent_at + f[0].extra_s for f in fates]
    assert all(b >= a - 1e-12 for a, b in zip(releases, releases[1:]))
    assert max(f[0].extra_s for f in fates) > 0.001  # it did jitter


def test_reorder_and_duplicate_and_corrupt_rates():
    n = 20_000
    fates = run(LinkProfile(reorder=0.1, reorder_gap_s=0.01, duplicate=0.05, corrupt=0.02), n=n, interval=0.001)
    releases = [(f[0].sent_at + f[0].extra_s) for f in fates]
    overtaken = sum(1 for a, b in zip(releases, releases[1:]) if b < a)
    assert overtaken > 0.05 * n
    dups = sum(len(f) == 2 for f in fates)
    assert binomial_bounds(n, 0.05)[0] <= dups <= binomial_bounds(n, 0.05)[1]
    corrupt = sum(e.corrupt for f in fates for e in f)
    assert binomial_bounds(n + dups, 0.02)[0] <= corrupt <= binomial_bounds(n + dups, 0.02)[1]


@pytest.mark.parametrize("bad", [dict(bandwidth_bps=0), dict(queue_frames=0), dict(extra_delay_s=-1),
                                 dict(jitter="cauchy"), dict(duplicate=1.5), dict(loss=None)])
def test_bad_profiles_are_rejected(bad):
    with pytest.raises((ValueError, AttributeError, TypeError)):
        p = LinkProfile(**bad)
        LinkEmulator(p, 1).transmit(0, 10)


def test_bad_loss_models():
    with pytest.raises(ValueError, match="0–1"):
        LossModel(p=1.2)
    with pytest.raises(ValueError, match="bernoulli"):
        LossModel(kind="burst")
