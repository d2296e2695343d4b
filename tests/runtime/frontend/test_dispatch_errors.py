"""How the dispatcher turns a worker's failures into what the client sees: a clear status
with no internal ids, pids or addresses (those go to the log)."""

import asyncio

import pytest
from ray.exceptions import ActorDiedError, RayTaskError

from runtime.engine import SamplingParams
from runtime.frontend.dispatch import WorkerLost, _Attempt, _get
from runtime.frontend.requests import InvalidRequest, PreparedRequest
from runtime.frontend.results import ServingError
from runtime.workers.handle import WorkerHandle
from runtime.workers.streams import StreamTimeout

WORKER = WorkerHandle("decode-0", "decode", actor=None)
ATTEMPT = _Attempt(PreparedRequest("client-id", (1, 2), SamplingParams()), "client-id@x.0")


def outcome(error: BaseException):
    async def failing():
        raise error

    with pytest.raises(Exception) as info:
        asyncio.run(_get(failing(), WORKER, ATTEMPT))
    return info.value


def test_a_dead_worker_is_lost_not_an_error_for_the_client():
    e = outcome(ActorDiedError())
    assert isinstance(e, WorkerLost) and e.worker == "decode-0"


def test_an_idle_stream_is_deadline_exceeded():
    e = outcome(
        RayTaskError(
            "stream",
            "Traceback ... pid=4242 ip=10.1.2.3",
            StreamTimeout("no output for request 'x' in 600 s"),
        )
    )
    assert isinstance(e, ServingError) and e.code == "DEADLINE_EXCEEDED"
    assert e.message == "request client-id produced no output within the worker's idle limit"


def test_the_engine_refusing_a_request_is_invalid_argument():
    e = outcome(RayTaskError("prefill", "tb", ValueError("prompt too long: shorten it")))
    assert isinstance(e, InvalidRequest) and str(e) == "prompt too long: shorten it"


def test_a_bug_on_a_worker_is_internal_without_its_details():
    e = outcome(
        RayTaskError("prefill", "Traceback pid=4242 ip=10.1.2.3 actor 9f3e", KeyError("block 17"))
    )
    assert isinstance(e, ServingError) and e.code == "INTERNAL"
    assert e.message == (
        "internal error while serving request client-id; the server log has the details"
    )
