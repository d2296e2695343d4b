"""The full fuzz run (`make fuzz`): over 10,000 hostile or random HTTP bodies and gRPC
messages against a real local cluster (tiny model, one prefill and one decode worker).

Every answer must be a 4xx / INVALID_ARGUMENT with a message or a complete success; never a
5xx, a dropped connection or a hang (each call has a 60 s timeout). Afterwards the same greedy
request gives the same tokens as before the fuzz and every worker's KV blocks are free again.
The counts by endpoint and status are printed at the end of the module.
"""

from collections import Counter

import api_fuzz as fz
import grpc
import httpx
import pytest
from cluster_helpers import NUM_BLOCKS, tiny_cluster_config, wait_for_free_blocks

from runtime.cluster.background import BackgroundServer
from runtime.frontend.requests import RequestPreparer

pytestmark = pytest.mark.fuzz
MAX_MODEL_LEN = 128  # short generations keep 10,000 inputs within minutes on 2 cores
GREEDY = {"prompt": "The quick brown fox", "max_tokens": 8, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    config = tiny_cluster_config(
        tiny_model_dir,
        {"prefill": {"replicas": 1, "num_cpus": 1}, "decode": {"replicas": 1, "num_cpus": 1}},
        model={"path": str(tiny_model_dir), "max_model_len": MAX_MODEL_LEN},
    )
    with BackgroundServer(config) as server:
        yield server


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return str(tiny_model_dir)


@pytest.fixture(scope="module")
def vocab_size(server) -> int:
    preparer: RequestPreparer = server.frontend.preparer
    return preparer.vocab_size


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.http_url) as client:
        yield client


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc_url) as ch:
        yield ch


@pytest.fixture(scope="module")
def counts(request):
    counts = Counter()
    yield counts
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():  # printed even when pytest captures output
        print("\nfuzz of the public API, answers by endpoint and status:\n" + fz.summary(counts))


@pytest.fixture(scope="module")
def greedy_before(http):
    r = http.post("/v1/completions", json=GREEDY, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def test_http_completions(http, model, vocab_size, counts, greedy_before):
    fz.run_fuzz(
        fz.http_requests(fz.completion_bodies(model, vocab_size)),
        lambda req: fz.post(http, "/v1/completions", *req, counts),
        3000,
    )


def test_http_chat_completions(http, model, counts, greedy_before):
    fz.run_fuzz(
        fz.http_requests(fz.chat_bodies(model)),
        lambda req: fz.post(http, "/v1/chat/completions", *req, counts),
        3000,
    )


def test_http_valid_completions_all_run(http, model, vocab_size, counts, greedy_before):
    fz.run_fuzz(
        fz.as_json(fz.valid_completion_bodies(model, vocab_size)),
        lambda req: fz.post(http, "/v1/completions", *req, counts, expect_ok=True),
        500,
    )


def test_grpc_messages_and_bytes(channel, model, vocab_size, counts, greedy_before):
    fz.run_fuzz(fz.grpc_payloads(model, vocab_size), lambda m: fz.call(channel, *m, counts), 3500)


def test_grpc_valid_requests_all_run(channel, model, vocab_size, counts, greedy_before):
    fz.run_fuzz(
        fz.generate_requests(model, vocab_size, valid=True),
        lambda req: fz.call(channel, "Generate", req.SerializeToString(), counts, expect_ok=True),
        500,
    )


def test_after_the_fuzz_greedy_answers_the_same_and_every_block_is_free(
    server, http, counts, greedy_before
):
    r = http.post("/v1/completions", json=GREEDY, timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == greedy_before
    free = wait_for_free_blocks(server)
    assert free == {w.name: NUM_BLOCKS for w in server.workers}
