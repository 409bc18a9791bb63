"""The edge cache in process: what counts as the same request, and its bounds."""

import numpy as np
import pytest

from agent.runtime.edge_cache import EdgeCache, cache_key


def arrays(x, dtype=np.float32, name="input"):
    return {name: np.asarray(x, dtype=dtype)}


def test_the_key_is_the_model_version_and_the_input_bytes():
    base = cache_key("sha-a", arrays([[1.0, 2.0]]))
    assert cache_key("sha-a", arrays([[1.0, 2.0]])) == base
    assert cache_key("sha-b", arrays([[1.0, 2.0]])) != base                      # a re-uploaded model
    assert cache_key("sha-a", arrays([[1.0, 2.5]])) != base                      # other data
    assert cache_key("sha-a", arrays([[1.0, 2.0]], np.float64)) != base          # other dtype, other bytes
    assert cache_key("sha-a", arrays([[1.0], [2.0]])) != base                    # same bytes, other shape
    assert cache_key("sha-a", arrays([[1.0, 2.0]], name="x")) != base            # other input
    two = {"a": np.ones(2, np.float32), "b": np.zeros(2, np.float32)}
    assert cache_key("s", two) == cache_key("s", dict(reversed(list(two.items()))))   # order of inputs: none


def test_hits_misses_and_least_recently_used_eviction():
    c = EdgeCache(max_entries=2, max_bytes=1 << 20)
    out = {"y": np.arange(4, dtype=np.float32)}
    assert c.get("k1") is None
    c.put("k1", out, "sat-3", 1.0)
    c.put("k2", out, "sat-4", 2.0)
    hit = c.get("k1")
    assert hit is not None and hit.executor == "sat-3"
    np.testing.assert_array_equal(hit.outputs["y"], out["y"])
    out["y"][0] = 99                                    # the caller's array is not the cached one
    assert c.get("k1").outputs["y"][0] == 0
    with pytest.raises(ValueError):
        hit.outputs["y"][1] = 5                         # shared by every hit: read-only
    c.put("k3", out, "sat-5", 3.0)                      # k2 was used least recently
    assert c.get("k2") is None and c.get("k1") is not None and c.get("k3") is not None
    d = c.describe()
    assert d["entries"] == 2 and d["evicted"] == 1 and d["hit"] == 4 and d["miss"] == 2
    assert d["hit_rate"] == pytest.approx(4 / 6, abs=1e-4)


def test_bytes_are_bounded_and_one_answer_cannot_fill_the_cache():
    c = EdgeCache(max_entries=100, max_bytes=8 * 1024)
    big = {"y": np.zeros(300, np.float32)}              # 1,200 B: over an eighth of 8 KiB
    c.put("big", big, "sat-1", 0.0)
    assert c.get("big") is None and c.counts["too_big"] == 1
    small = {"y": np.zeros(200, np.float32)}            # 800 B each
    for k in range(20):
        c.put(f"k{k}", small, "sat-1", float(k))
    assert c.bytes <= 8 * 1024 and len(c) == 10 and c.get("k19") is not None and c.get("k0") is None
