"""n, best_of, logprobs and echo through the real HTTP and gRPC frontends over a fake cluster
whose tokens and logprobs are known: OpenAI's shapes, the derived seeds, best_of's ranking,
the SDK, and the limits."""

import json

import httpx
import pytest
from fake_frontend import FakeDispatcher, FakeFrontend, check_admissible

from runtime.client import Client
from runtime.engine import TokenLogprob
from runtime.frontend.results import GenerationChunk, Timings, Usage

NUM_TOKENS = 3


def token_of(seed: int | None, j: int) -> int:
    return 40 + ((seed or 0) * 7 + j) % 50


def logprob_of(seed: int | None, j: int) -> float:
    return -0.5 * (j + 1) - 0.01 * (seed or 0)


class LogprobDispatcher(FakeDispatcher):
    """Token j of a request seeded s is token_of(s, j) with logprob_of(s, j); its top
    logprobs are (that token, then ids 1, 2, ...) and its prompt token p has logprob -p/100."""

    async def generate(self, req, client_key="", deadline_s=None):
        check_admissible(req, self.preparer)
        self.admitted.append(req)
        p, seed = req.params, req.params.seed
        prompt = None
        if p.prompt_logprobs is not None:
            prompt = (None,) + tuple(
                TokenLogprob(t, -t / 100, ((t, -t / 100),)[: p.prompt_logprobs])
                for t in req.prompt_token_ids[1:]
            )
        for j in range(NUM_TOKENS):
            tok, lp = token_of(seed, j), logprob_of(seed, j)
            top = ((tok, lp), *((i, lp - i) for i in range(1, 20)))
            last = j == NUM_TOKENS - 1
            yield GenerationChunk(
                req.request_id,
                [tok],
                self.preparer.tokenizer.decode([tok]),
                "length" if last else None,
                Usage(len(req.prompt_token_ids), NUM_TOKENS) if last else None,
                Timings() if last else None,
                logprobs=(TokenLogprob(tok, lp, top[: p.logprobs]),)
                if p.logprobs is not None
                else None,
                prompt_logprobs=prompt if j == 0 else None,
            )


@pytest.fixture(scope="module")
def served(tiny_preparer):
    with FakeFrontend(tiny_preparer, dispatcher=LogprobDispatcher(tiny_preparer)) as f:
        yield f


@pytest.fixture(scope="module")
def http(served):
    with httpx.Client(base_url=served.http_url, timeout=30) as c:
        yield c


def texts(tokenizer, seed):
    return [tokenizer.decode([token_of(seed, j)]) for j in range(NUM_TOKENS)]


def test_completion_logprobs_shape(http, tiny_preparer):
    tok = tiny_preparer.tokenizer
    r = http.post("/v1/completions", json={"prompt": "Hello", "seed": 4, "logprobs": 2}).json()
    lp = r["choices"][0]["logprobs"]
    assert lp["tokens"] == texts(tok, 4)
    assert lp["token_logprobs"] == [logprob_of(4, j) for j in range(NUM_TOKENS)]
    assert lp["top_logprobs"][0] == {
        tok.decode([token_of(4, 0)]): logprob_of(4, 0),
        tok.decode([1]): logprob_of(4, 0) - 1,
    }
    assert lp["text_offset"] == [0, len(lp["tokens"][0]), len(lp["tokens"][0] + lp["tokens"][1])]
    assert r["choices"][0]["text"] == "".join(lp["tokens"])


def test_echo_puts_the_prompt_and_its_logprobs_first(http, served, tiny_preparer):
    ids = tiny_preparer.tokenizer.encode("Hello world")
    body = {"prompt": "Hello world", "seed": 1, "logprobs": 1, "echo": True}
    choice = http.post("/v1/completions", json=body).json()["choices"][0]
    assert choice["text"].startswith("Hello world")
    lp = choice["logprobs"]
    assert lp["token_logprobs"][: len(ids)] == [None] + [-t / 100 for t in ids[1:]]
    assert lp["top_logprobs"][0] is None and len(lp["tokens"]) == len(ids) + NUM_TOKENS
    assert tiny_preparer.tokenizer.decode(ids[:1]) == lp["tokens"][0]
    admitted = served.dispatcher.admitted
    assert admitted[-1].params.prompt_logprobs == 1
    streamed = stream(http, "/v1/completions", body)
    assert "".join(c["choices"][0]["text"] for c in streamed) == choice["text"]
    assert [x for c in streamed for x in c["choices"][0]["logprobs"]["text_offset"]] == lp[
        "text_offset"
    ]


def stream(http, path, body):
    with http.stream("POST", path, json={**body, "stream": True}) as r:
        lines = [x[6:] for x in r.iter_lines() if x.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(x) for x in lines[:-1]]


def test_chat_logprobs_shape_whole_and_streamed(http, tiny_preparer):
    tok = tiny_preparer.tokenizer
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "seed": 2,
        "logprobs": True,
        "top_logprobs": 2,
    }
    choice = http.post("/v1/chat/completions", json=body).json()["choices"][0]
    content = choice["logprobs"]["content"]
    first = tok.decode([token_of(2, 0)])
    assert content[0] == {
        "token": first,
        "logprob": logprob_of(2, 0),
        "bytes": list(first.encode()),
        "top_logprobs": [
            {"token": first, "logprob": logprob_of(2, 0), "bytes": list(first.encode())},
            {
                "token": tok.decode([1]),
                "logprob": logprob_of(2, 0) - 1,
                "bytes": list(tok.decode([1]).encode()),
            },
        ],
    }
    chunks = stream(http, "/v1/chat/completions", body)
    streamed = [
        c for ch in chunks for c in (ch["choices"][0]["logprobs"] or {"content": []})["content"]
    ]
    assert streamed == content
    plain = http.post(
        "/v1/chat/completions", json={**body, "logprobs": False, "top_logprobs": None}
    )
    assert plain.json()["choices"][0]["logprobs"] is None


def test_n_choices_get_derived_seeds_and_indices(http, served, tiny_preparer):
    tok = tiny_preparer.tokenizer
    r = http.post("/v1/completions", json={"prompt": "Hello", "seed": 10, "n": 3}).json()
    assert [c["index"] for c in r["choices"]] == [0, 1, 2]
    assert [c["text"] for c in r["choices"]] == ["".join(texts(tok, 10 + i)) for i in range(3)]
    assert r["usage"]["completion_tokens"] == 3 * NUM_TOKENS
    chunks = stream(
        http,
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "seed": 10, "n": 2},
    )
    roles = [c["choices"][0]["index"] for c in chunks if "role" in c["choices"][0]["delta"]]
    assert roles == [0, 1]
    for i in range(2):
        got = "".join(
            c["choices"][0]["delta"].get("content", "")
            for c in chunks
            if c["choices"][0]["index"] == i
        )
        assert got == "".join(texts(tok, 10 + i))
    unseeded = http.post("/v1/completions", json={"prompt": "Hello", "n": 2}).json()
    assert len(unseeded["choices"]) == 2
    assert [q.params.seed for q in served.dispatcher.admitted[-2:]] == [None, None]
    top = http.post("/v1/completions", json={"prompt": "Hello", "seed": 2**63 - 1, "n": 2})
    assert top.status_code == 200
    assert served.dispatcher.admitted[-1].params.seed == -(2**63)  # wrapped to int64


def test_best_of_keeps_the_highest_cumulative_logprob(http, served, tiny_preparer):
    tok = tiny_preparer.tokenizer
    # logprob_of falls with the seed: seeds 5, 6 are the best of 5..8.
    r = http.post(
        "/v1/completions", json={"prompt": "Hello", "seed": 5, "n": 2, "best_of": 4}
    ).json()
    assert [c["text"] for c in r["choices"]] == ["".join(texts(tok, 5)), "".join(texts(tok, 6))]
    assert [c["logprobs"] for c in r["choices"]] == [None, None]
    assert [q.params.logprobs for q in served.dispatcher.admitted[-4:]] == [0] * 4


@pytest.mark.parametrize(
    "path, body, message",
    [
        ("/v1/completions", {"n": 0}, "n must be an int in [1, 16], got 0"),
        ("/v1/completions", {"n": 3, "best_of": 2}, "best_of must be an int in [n=3, 16], got 2"),
        ("/v1/completions", {"best_of": 17}, "best_of must be an int in [n=1, 16], got 17"),
        ("/v1/completions", {"best_of": 2, "stream": True}, "best_of > n cannot be streamed"),
        ("/v1/completions", {"logprobs": 21}, "logprobs must be an int in [0, 20], got 21"),
        ("/v1/completions", {"logprobs": -1}, "logprobs must be an int in [0, 20], got -1"),
        ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs needs logprobs"),
        (
            "/v1/chat/completions",
            {"logprobs": True, "top_logprobs": 21},
            "top_logprobs must be an int in [0, 20], got 21",
        ),
        ("/v1/chat/completions", {"logprobs": 1}, "logprobs: Input should be a valid boolean"),
    ],
)
def test_bad_choice_and_logprob_fields_get_400(http, path, body, message):
    base = (
        {"prompt": "hi"}
        if path == "/v1/completions"
        else {"messages": [{"role": "user", "content": "hi"}]}
    )
    r = http.post(path, json={**base, **body})
    assert r.status_code == 400 and message in r.json()["error"]["message"]


def test_sdk_choices_and_logprobs_over_grpc(served, tiny_preparer):
    with Client(served.grpc_url) as client:
        choices = client.generate_choices("Hello", n=2, seed=3, logprobs=1, prompt_logprobs=0)
        assert [c.index for c in choices] == [0, 1]
        for i, c in enumerate(choices):
            assert c.token_ids == [token_of(3 + i, j) for j in range(NUM_TOKENS)]
            assert [(e.token_id, e.logprob) for e in c.logprobs] == list(
                zip(c.token_ids, [logprob_of(3 + i, j) for j in range(NUM_TOKENS)])
            )
            assert [e.top for e in c.logprobs] == [[(e.token_id, e.logprob)] for e in c.logprobs]
            ids = tiny_preparer.tokenizer.encode("Hello")
            assert [e.token_id for e in c.prompt_logprobs or []] == ids[1:]
        best = client.generate_choices("Hello", n=1, best_of=3, seed=5)
        assert best[0].token_ids == [token_of(5, j) for j in range(NUM_TOKENS)]
        assert best[0].logprobs is None
        with pytest.raises(TypeError, match="generate_choices"):
            client.generate("Hello", n=2)
        plain = client.generate("Hello", seed=3)
        assert plain.token_ids == choices[0].token_ids and plain.logprobs is None


def test_limits_bound_choices_and_logprobs():
    from runtime.frontend.choices import check_choices, check_num_logprobs
    from runtime.frontend.requests import InvalidRequest, RequestLimits

    with pytest.raises(ValueError, match="max_logprobs must be <= 20"):
        RequestLimits(max_logprobs=21)
    small = RequestLimits(max_choices=2, max_logprobs=1)
    assert check_choices(small, 2, None, stream=True) == 2
    assert check_choices(small, 1, 2, stream=False) == 2
    with pytest.raises(InvalidRequest, match=r"n must be an int in \[1, 2\], got 3"):
        check_choices(small, 3, None, stream=False)
    with pytest.raises(InvalidRequest, match=r"logprobs must be an int in \[0, 1\], got 2"):
        check_num_logprobs(small, "logprobs", 2)
