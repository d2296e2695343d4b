"""Admission: refuse at once what would miss its TTFT target or overfill a queue."""

import pytest

from scheduler import Overloaded, Router, SchedulerConfig
from scheduler.admission import TTFTMargin, check_admission, predicted_wait_s
from scheduler.load import StepTimeModel
from tests.scheduler.test_router import WorkerLoad


def test_predicted_wait_is_the_queue_and_the_prompt_over_the_rate():
    assert predicted_wait_s(900, 100, 500.0) == pytest.approx(2.0)
    assert predicted_wait_s(10**6, 100, 0.0) == 0.0  # not measured yet: no prediction


def test_a_request_predicted_past_its_budget_is_refused_with_a_retry_hint():
    check_admission(900, 100, 500.0, ttft_budget_s=2.0, max_queued_tokens=0)
    with pytest.raises(Overloaded, match=r"predicted in 2\.2 s, past the 2\.0 s") as e:
        check_admission(1000, 100, 500.0, ttft_budget_s=2.0, max_queued_tokens=0)
    assert e.value.kind == "ttft"
    assert e.value.retry_after_s == 1  # 100 tokens over at 500/s: 0.2 s, at least 1
    with pytest.raises(Overloaded) as e:
        check_admission(6000, 100, 500.0, ttft_budget_s=2.0, max_queued_tokens=0)
    assert e.value.retry_after_s == 11  # (6100 - 1000) / 500 = 10.2 s


def test_the_queue_bound_refuses_but_an_empty_queue_takes_any_prompt():
    check_admission(0, 50_000, 100.0, ttft_budget_s=None, max_queued_tokens=1000)
    check_admission(900, 100, 100.0, ttft_budget_s=None, max_queued_tokens=1000)
    with pytest.raises(Overloaded, match="queue is full") as e:
        check_admission(901, 100, 100.0, ttft_budget_s=None, max_queued_tokens=1000)
    assert e.value.kind == "queue"


def _router(**config) -> Router:
    r = Router(SchedulerConfig(**config))
    r.report(WorkerLoad("p0", "prefill", num_queued_prompt_tokens=400, prefill_tokens_per_s=1000))
    r.report(WorkerLoad("p1", "prefill", num_queued_prompt_tokens=600, prefill_tokens_per_s=1000))
    return r


def test_the_router_admits_within_the_slo_charging_each_admitted_request():
    r = _router(ttft_slo_s=1.0)
    # p0: 400 queued + 300 = 0.7 s; then p1: 600 + 300 = 0.9 s; then the best is p0 at
    # 700 + 300 = 1.0 s; the next would be 1.3 s anywhere.
    assert [r.pick_prefill([1] * 300, admit=True) for _ in range(3)] == ["p0", "p1", "p0"]
    with pytest.raises(Overloaded):
        r.pick_prefill([1] * 300, admit=True)
    assert r.num_refused == 1
    assert r._entries["p0"].queued_prompt_tokens == 1000  # the refused one charged nothing
    assert r.pick_prefill([1] * 300) == "p1"  # a retry (not admit) is never refused
    r.report(WorkerLoad("p0", "prefill", num_queued_prompt_tokens=0, prefill_tokens_per_s=1000))
    assert r.pick_prefill([1] * 300, admit=True) == "p0"  # drained: admitted again


def test_a_deadline_sooner_than_the_slo_is_the_budget():
    r = _router(ttft_slo_s=5.0)
    assert r.pick_prefill([1] * 100, admit=True, deadline_s=0.6) == "p0"  # 0.5 s
    with pytest.raises(Overloaded, match="past the 0.4 s"):
        r.pick_prefill([1] * 100, admit=True, deadline_s=0.4)  # 0.6 s on p0 now
    r = _router(max_queued_prompt_tokens=0)  # no SLO nor bound: only the deadline refuses
    with pytest.raises(Overloaded):
        r.pick_prefill([1] * 100, admit=True, deadline_s=0.1)
    assert r.pick_prefill([1] * 100_000, admit=True, deadline_s=None) == "p0"


def test_colocated_workers_are_admitted_the_same_way():
    r = Router(SchedulerConfig(ttft_slo_s=1.0, max_queued_prompt_tokens=2000))
    r.report(WorkerLoad("c0", "colocated", num_queued_prompt_tokens=1900))
    with pytest.raises(Overloaded, match="queue is full"):
        r.pick_colocated([1] * 200, admit=True)  # rate unknown: the bound still holds


def test_bad_scheduler_settings_are_refused_with_the_field_named():
    with pytest.raises(ValueError, match="scheduler.routing must be one of"):
        SchedulerConfig(routing="random")
    with pytest.raises(ValueError, match="scheduler.ttft_slo_s must be > 0"):
        SchedulerConfig(ttft_slo_s=0)


def test_a_new_worker_without_a_rate_is_predicted_by_its_pools_slowest_rate():
    r = Router(SchedulerConfig(ttft_slo_s=1.0))
    r.report(WorkerLoad("p0", "prefill", num_queued_prompt_tokens=900, prefill_tokens_per_s=500))
    r.report(WorkerLoad("p1", "prefill", num_queued_prompt_tokens=100))  # just started
    assert r.pick_prefill([1] * 300, admit=True) == "p1"  # (100 + 300) / 500 = 0.8 s
    with pytest.raises(Overloaded, match="predicted in 1.4 s"):
        r.pick_prefill([1] * 300, admit=True)  # p1 now 400 queued: 1.4 s


def test_the_margin_is_a_quantile_of_how_late_first_tokens_came_never_negative():
    m = TTFTMargin(0.9, min_samples=10, max_samples=100)
    for i in range(9):
        m.observe(1.0, 1.0 + i / 10)
    assert m.margin_s == 0.0  # fewer than 10 observations: no margin yet
    m.observe(1.0, 1.9)
    assert m.margin_s == pytest.approx(0.9)  # errors 0.0 .. 0.9: the 90% quantile
    for _ in range(100):
        m.observe(1.0, 0.5)  # early: the old errors age out, the margin never goes negative
    assert m.margin_s == 0.0


def test_the_margin_counts_against_a_queue_but_an_idle_worker_is_judged_alone():
    check_admission(500, 100, 500.0, ttft_budget_s=2.0, max_queued_tokens=0, margin_s=0.8)
    with pytest.raises(Overloaded, match=r"predicted in 2\.2 s") as e:
        check_admission(600, 100, 500.0, ttft_budget_s=2.0, max_queued_tokens=0, margin_s=0.8)
    assert e.value.retry_after_s == 1  # (700 - 1.2 s * 500) / 500 = 0.2 s
    with pytest.raises(Overloaded) as e:
        check_admission(600, 100, 500.0, ttft_budget_s=2.0, max_queued_tokens=0, margin_s=5.0)
    assert e.value.retry_after_s == 2  # the margin past the budget: once the 600 are done
    check_admission(0, 900, 500.0, ttft_budget_s=2.0, max_queued_tokens=0, margin_s=5.0)


def test_the_router_learns_its_margin_from_observed_first_tokens():
    r = _router(ttft_slo_s=1.0)  # p0: 400 queued, p1: 600, both at 1,000 tokens/s
    route = r.route_prompt("prefill", [1] * 300, admit=True)
    assert (route.worker, route.predicted_ttft_s) == ("p0", pytest.approx(0.7))
    for _ in range(10):
        r.observe_ttft("prefill", 0.5, 0.75)  # first tokens come 0.25 s later than predicted
    assert r.ttft_margin_s("prefill") == pytest.approx(0.25)
    with pytest.raises(Overloaded, match=r"predicted in 1\.2 s"):
        r.route_prompt("prefill", [1] * 350, admit=True)  # p1: 0.95 s + 0.25 s
    assert r.ttft_margin_s("colocated") == 0.0  # each prompt role learns its own
    plain = _router(ttft_slo_s=1.0, ttft_margin_quantile=None)
    plain.observe_ttft("prefill", 0.5, 0.75)
    assert plain.ttft_margin_s("prefill") == 0.0


def test_the_step_time_model_fits_the_line_and_predicts_flat_from_one_batch_size():
    m = StepTimeModel()
    assert (m.base_s, m.per_seq_s) == (0.0, 0.0)
    for _ in range(3):
        for batch in (1, 4, 9, 16):
            m.add(batch, 0.05 + 0.004 * batch)
    # The prior shrinks the slope by var / (var + 1): the batch-size variance is ~33.
    assert m.per_seq_s == pytest.approx(0.004, rel=0.05)
    assert m.base_s + 10 * m.per_seq_s == pytest.approx(0.09, rel=0.02)
    flat = StepTimeModel()
    for _ in range(5):
        flat.add(3, 0.07)
    assert (flat.base_s, flat.per_seq_s) == (pytest.approx(0.07), 0.0)


def _disaggregated(prefill_seqs: int, **config) -> Router:
    r = Router(SchedulerConfig(**config))
    r.report(WorkerLoad("p0", "prefill", num_waiting=prefill_seqs, prefill_tokens_per_s=1000))
    r.report(
        WorkerLoad("d0", "decode", num_running=6, decode_step_s=0.05, decode_step_s_per_seq=0.01)
    )
    r.report(
        WorkerLoad("d1", "decode", num_running=2, decode_step_s=0.05, decode_step_s_per_seq=0.01)
    )
    return r


def test_a_request_whose_tokens_would_come_past_the_tpot_target_is_refused():
    # d1 (2 running) takes half the sequences in the prefill pool, then this one: with 2,
    # 3 and 4 there, 0.05 + 0.01 * (2 + 1 + 1), * 4.5, then * 5 = 0.1 s.
    r = _disaggregated(2, tpot_slo_s=0.097)
    assert [r.pick_prefill([1] * 10, admit=True) for _ in range(2)] == ["p0"] * 2
    with pytest.raises(Overloaded, match=r"a token every 100 ms is predicted, past the 97 ms") as e:
        r.pick_prefill([1] * 10, admit=True)
    assert e.value.kind == "tpot" and e.value.retry_after_s >= 1
    assert r.pick_prefill([1] * 10) == "p0"  # a retry is never refused
    # Without a target, or before any decode step was measured, the decode side admits.
    assert _disaggregated(100).pick_prefill([1] * 10, admit=True) == "p0"
    r = Router(SchedulerConfig(tpot_slo_s=0.01))
    r.report(WorkerLoad("p0", "prefill", num_waiting=50))
    r.report(WorkerLoad("d0", "decode", num_running=60))
    assert r.pick_prefill([1] * 10, admit=True) == "p0"


def test_a_decode_worker_without_step_times_is_predicted_by_its_pools_slowest():
    r = Router(SchedulerConfig(tpot_slo_s=0.1))
    r.report(WorkerLoad("p0", "prefill"))
    r.report(
        WorkerLoad("d0", "decode", num_running=9, decode_step_s=0.05, decode_step_s_per_seq=0.005)
    )
    r.report(WorkerLoad("d1", "decode", num_running=7))  # just started, taken to step as d0
    # d1 with 7 running, half the prefill pool's sequences and this one: 0.05 + 0.005 * 8,
    # then * 8.5 ... * 10 (0.1 s); a sixth would make it 10.5 seqs: 0.1025 s.
    assert [r.pick_prefill([1] * 10, admit=True) for _ in range(5)] == ["p0"] * 5
    with pytest.raises(Overloaded, match="past the 100 ms target"):
        r.pick_prefill([1] * 10, admit=True)
