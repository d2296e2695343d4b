"""The fast fuzz slice (`make test`): hostile HTTP bodies and gRPC messages against the real
frontends over a fake dispatcher. Every answer is a 4xx / INVALID_ARGUMENT with a message or
a complete success, and every request the frontend admits fits the context and the KV wire.
The whole-cluster run with many more inputs is tests/e2e/test_fuzz_api.py (`make fuzz`)."""

from collections import Counter

import api_fuzz as fz
import grpc
import httpx
import pytest

EXAMPLES = 60  # per test: a few hundred in all, seconds on a shared 2-core machine


@pytest.fixture(scope="module")
def http(frontend):
    with httpx.Client(base_url=frontend.http_url) as client:
        yield client


@pytest.fixture(scope="module")
def channel(frontend):
    with grpc.insecure_channel(frontend.grpc_url) as ch:
        yield ch


@pytest.fixture
def counts(frontend):
    counts = Counter()
    yield counts
    assert frontend.dispatcher.violations == []
    assert sum(counts.values()) > 0


@pytest.mark.parametrize(
    "path,bodies",
    [
        ("/v1/completions", lambda p: fz.completion_bodies("tiny", p.vocab_size)),
        ("/v1/chat/completions", lambda p: fz.chat_bodies("tiny")),
    ],
    ids=["completions", "chat"],
)
def test_http_fuzz_gets_4xx_json_or_a_complete_answer(http, tiny_preparer, counts, path, bodies):
    fz.run_fuzz(
        fz.http_requests(bodies(tiny_preparer)),
        lambda req: fz.post(http, path, *req, counts),
        EXAMPLES,
        derandomize=True,
    )


def test_http_fuzz_of_valid_requests_gets_200(http, tiny_preparer, counts, frontend):
    before = len(frontend.dispatcher.admitted)
    fz.run_fuzz(
        fz.as_json(fz.valid_completion_bodies("tiny", tiny_preparer.vocab_size)),
        lambda req: fz.post(http, "/v1/completions", *req, counts, expect_ok=True),
        EXAMPLES,
        derandomize=True,
    )
    assert len(frontend.dispatcher.admitted) - before == counts["POST /v1/completions 200"]


def test_grpc_fuzz_gets_invalid_argument_or_a_complete_answer(channel, tiny_preparer, counts):
    fz.run_fuzz(
        fz.grpc_payloads("tiny", tiny_preparer.vocab_size),
        lambda m: fz.call(channel, *m, counts),
        2 * EXAMPLES,
        derandomize=True,
    )


def test_grpc_fuzz_of_valid_requests_succeeds(channel, tiny_preparer, counts):
    fz.run_fuzz(
        fz.generate_requests("tiny", tiny_preparer.vocab_size, valid=True),
        lambda req: fz.call(channel, "Generate", req.SerializeToString(), counts, expect_ok=True),
        EXAMPLES,
        derandomize=True,
    )
