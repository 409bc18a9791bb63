"""/metrics: the histograms a node feeds as tasks end, in the exposition format Prometheus parses."""

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from prometheus_client.exposition import generate_latest

from agent.runtime.metrics import TaskMetrics


def scrape(m: TaskMetrics) -> dict[str, dict[tuple, float]]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(m)
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_task_latency_is_split_by_phase_and_status():
    m = TaskMetrics("sat-3")
    m.task_finished("succeeded", {"total_ms": 40.0, "physics_ms": 12.0, "compute_ms": 20.0, "overhead_ms": 8.0})
    m.task_finished("succeeded", {"total_ms": 3.0, "physics_ms": 0.0, "compute_ms": 2.0, "overhead_ms": 1.0})
    m.task_finished("failed", {"total_ms": 90000.0, "physics_ms": 0.0, "compute_ms": 0.0, "overhead_ms": 90000.0})
    m.task_finished("failed", None)         # never finished: nothing to record
    got = scrape(m)
    count = got["orbitmesh_task_latency_seconds_count"]
    key = lambda phase, status: (("node", "sat-3"), ("phase", phase), ("status", status))  # noqa: E731
    assert count[key("total", "succeeded")] == 2 and count[key("total", "failed")] == 1
    total = got["orbitmesh_task_latency_seconds_sum"]
    assert abs(total[key("total", "succeeded")] - 0.043) < 1e-9
    assert abs(total[key("physics", "succeeded")] - 0.012) < 1e-9
    buckets = got["orbitmesh_task_latency_seconds_bucket"]
    le = lambda phase, status, b: tuple(sorted(key(phase, status) + (("le", b),)))  # noqa: E731
    assert buckets[le("total", "succeeded", "0.005")] == 1 and buckets[le("total", "succeeded", "0.05")] == 2
    assert buckets[le("total", "failed", "60.0")] == 0 and buckets[le("total", "failed", "+Inf")] == 1


def test_inference_time_per_model():
    m = TaskMetrics("sat-0")
    for s in (0.0004, 0.0006, 0.03):
        m.inference_done("digits", s)
    m.inference_done("cloudmask", -1.0)     # a clock step never makes a negative observation
    got = scrape(m)
    count = got["orbitmesh_inference_seconds_count"]
    assert count[(("model", "digits"), ("node", "sat-0"))] == 3
    assert got["orbitmesh_inference_seconds_sum"][(("model", "cloudmask"), ("node", "sat-0"))] == 0.0
    b = got["orbitmesh_inference_seconds_bucket"]
    assert b[(("le", "0.0005"), ("model", "digits"), ("node", "sat-0"))] == 1
    assert b[(("le", "0.001"), ("model", "digits"), ("node", "sat-0"))] == 2
