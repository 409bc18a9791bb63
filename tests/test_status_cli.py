"""``orbitmesh status`` output: a table for a small fleet, a summary that stays short for a large one."""

from agent.ops.status_cli import NAMES_SHOWN, format_summary, format_table


def report(name, plane, slot, *, links_down=(), tasks=None):
    neighbours = [{"node": f"n{plane}-{slot + d}", "link_up": d not in links_down, "latency_ms": 2.0 + d}
                  for d in (1, 2)]
    return {"node": name, "orbit": {"plane": plane, "slot": slot}, "position": {"lat_deg": 1.0, "lon_deg": 2.0},
            "neighbours": neighbours, "tasks": tasks or {}, "clock": {"scale": 1.0, "paused": False}}


def fleet(planes, per_plane):
    names = [f"sat-{p * per_plane + s}" for p in range(planes) for s in range(per_plane)]
    results = {n: report(n, i // per_plane, i % per_plane) for i, n in enumerate(names)}
    return names, results


def test_a_large_fleet_is_summarised_in_a_few_lines_naming_what_is_wrong():
    names, results = fleet(72, 22)
    for i in range(30):                                      # 30 nodes down: a dozen named, the rest counted
        results[names[i * 50]] = {"error": "connection refused"}
    results["sat-101"] = report("sat-101", 4, 13, links_down=(2,), tasks={"succeeded": 3})
    results["sat-102"] = report("sat-102", 4, 14, tasks={"succeeded": 2, "running": 1})
    out = format_summary(names, results)
    lines = out.splitlines()
    assert len(lines) <= 8, out
    assert lines[0].startswith("1584 nodes: 1554 answering, 30 DOWN: sat-0, sat-50,")
    assert f"and {30 - NAMES_SHOWN} more" in lines[0]
    assert "3107/3108 streams up" in out and "min 3.0, median 3.5, max 4.0 ms" in out
    assert "planes with a link down: 1: 4 (sat-101–n4-15)" in out
    assert "tasks: running=1, succeeded=5" in out
    assert "orbital clock: 1×" in out


def test_a_small_fleet_is_a_line_per_node_and_a_ground_station_has_no_plane():
    names, results = fleet(2, 2)
    results["gs-london"] = report("gs-london", 0, 0) | {"orbit": {"ground_station": True}}
    results["sat-3"] = {"error": "timed out"}
    out = format_table(names + ["gs-london"], results)
    assert "sat-3    DOWN  timed out" in out and "gs-london ground" in out.replace("  ", " ")
    assert "4/5 nodes answering" in out
