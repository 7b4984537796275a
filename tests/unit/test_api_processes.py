"""The API's pure decisions: the supervisor's restart policy, the merged metrics of its children, and the health
of one process and of the set."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streams.api.health import ApiHealth, KafkaWatch, liveness, readiness
from streams.api.processes import ChildView, RestartPolicy, Restarts, merge_metrics, overall_live, overall_ready
from streams.metrics import Metrics

# -- restarts -----------------------------------------------------------------------------------------------------


def test_restarts_back_off_doubling_up_to_the_cap() -> None:
    restarts = Restarts(RestartPolicy(max_deaths=10, window_s=1000, first_delay_s=0.5, max_delay_s=3))
    assert [restarts.after_death(t) for t in range(6)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert restarts.total == 6


def test_too_many_deaths_in_the_window_give_up() -> None:
    restarts = Restarts(RestartPolicy(max_deaths=3, window_s=60))
    assert all(restarts.after_death(t) is not None for t in (0, 1, 2))
    assert restarts.after_death(3) is None


def test_deaths_older_than_the_window_are_forgotten() -> None:
    policy = RestartPolicy(max_deaths=2, window_s=10, first_delay_s=1, max_delay_s=100)
    restarts = Restarts(policy)
    assert restarts.after_death(0) == 1
    assert restarts.after_death(5) == 2
    # 0 and 5 are out of the window by now: this is a first death again.
    assert restarts.after_death(100) == 1
    assert restarts.after_death(101) == 2
    assert restarts.after_death(102) is None


# -- merged metrics -----------------------------------------------------------------------------------------------


def _child_text(calls: int, kafka_up: int) -> str:
    metrics = Metrics()
    for _ in range(calls):
        metrics.api_calls.labels("WriteToLog", "OK").inc()
        metrics.api_latency.labels("WriteToLog").observe(0.003)
    metrics.api_kafka_up.set(kafka_up)
    return generate_latest(metrics.registry).decode()


def _collect(texts: dict[str, str]) -> str:
    registry = CollectorRegistry()

    class Merged:
        def collect(self) -> object:
            return merge_metrics(texts)

    registry.register(Merged())  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def test_children_metrics_merge_with_a_process_label() -> None:
    text = _collect({"0": _child_text(3, 1), "1": _child_text(5, 0)})
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    calls = "walstream_api_calls_total"
    assert samples[(calls, (("code", "OK"), ("method", "WriteToLog"), ("process", "0")))] == 3
    assert samples[(calls, (("code", "OK"), ("method", "WriteToLog"), ("process", "1")))] == 5
    assert samples[("walstream_api_kafka_up", (("process", "0"),))] == 1
    assert samples[("walstream_api_kafka_up", (("process", "1"),))] == 0
    count = "walstream_api_call_seconds_count"
    assert samples[(count, (("method", "WriteToLog"), ("process", "1")))] == 5
    # One family per name, however many children: the exposition stays valid.
    assert text.count("# TYPE walstream_api_calls_total counter") == 1


def test_no_children_no_samples() -> None:
    assert merge_metrics({}) == []


# -- one process's health -----------------------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_readiness_needs_listening_and_kafka() -> None:
    assert readiness(False, False, None)[0] is False
    assert readiness(True, False, None)[0] is False
    assert readiness(True, False, False)[0] is False
    assert readiness(True, True, True)[0] is False
    ok, details = readiness(True, False, True)
    assert ok and details["kafka"] == "up"


def test_liveness_fails_only_past_the_limit() -> None:
    assert liveness(0.0, 5.0)[0]
    assert liveness(5.0, 5.0)[0]
    ok, details = liveness(5.5, 5.0)
    assert not ok and "Kafka not reached" in str(details["reason"])


def test_api_health_follows_the_watch() -> None:
    clock = _Clock()
    answers = [True]
    metrics = Metrics()
    watch = KafkaWatch(lambda _timeout: answers[-1], metrics.api_kafka_up, clock=clock)
    health = ApiHealth(kafka_unreachable_s=10)
    assert health.ready()[0] is False and health.live()[0] is True  # not listening yet
    health.listening(watch)
    assert health.ready()[0] is False  # no answer from Kafka yet
    watch.check()
    assert health.ready()[0] and health.live()[0]
    assert metrics.api_kafka_up._value.get() == 1
    answers.append(False)
    clock.now += 1
    watch.check()
    assert not health.ready()[0] and health.live()[0]
    assert metrics.api_kafka_up._value.get() == 0
    clock.now += 10
    watch.check()
    assert not health.live()[0]
    answers.append(True)
    watch.check()
    assert health.ready()[0] and health.live()[0]
    health.draining()
    assert not health.ready()[0]


def test_never_reaching_kafka_counts_from_the_start() -> None:
    clock = _Clock()
    watch = KafkaWatch(lambda _timeout: False, clock=clock)
    health = ApiHealth(kafka_unreachable_s=10)
    health.listening(watch)
    watch.check()
    assert health.live()[0]
    clock.now += 11
    assert not health.live()[0]


# -- the set's health ---------------------------------------------------------------------------------------------


def _view(slot: int, state: str, live: bool | None = True, ready: bool | None = True) -> ChildView:
    return ChildView(slot, 1000 + slot, state, 0, live, ready)


@pytest.mark.parametrize(
    ("views", "live"),
    [
        ([_view(0, "serving"), _view(1, "serving")], True),
        ([_view(0, "serving"), _view(1, "restarting", None, None)], True),
        ([_view(0, "serving"), _view(1, "failed", None, None)], False),
        ([_view(0, "serving"), _view(1, "serving", live=False)], False),
        ([_view(0, "serving"), _view(1, "serving", live=None)], False),
    ],
)
def test_the_set_is_live_unless_a_child_is_given_up_or_unhealthy(views: list[ChildView], live: bool) -> None:
    assert overall_live(views) is live


def test_the_set_is_ready_when_its_serving_children_are() -> None:
    assert overall_ready([_view(0, "serving"), _view(1, "restarting", None, None)], stopping=False)
    assert not overall_ready([_view(0, "starting", None, None), _view(1, "starting", None, None)], stopping=False)
    assert not overall_ready([_view(0, "serving"), _view(1, "serving", ready=False)], stopping=False)
    assert not overall_ready([_view(0, "serving"), _view(1, "serving")], stopping=True)
