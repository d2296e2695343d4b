"""The OpenAI HTTP edge: every malformed or hostile body gets a 4xx with an OpenAI-style JSON
error saying what to fix, nothing out of range reaches the workers, and preparing a request
(tokenizing) never holds the event loop."""

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fake_frontend import BlockingTokenizer, FakeFrontend

from runtime.frontend.requests import RequestPreparer
from runtime.frontend.results import GenerationChunk

SURROGATE_FIX = (
    "is not valid Unicode: it has a lone surrogate ('\\ud800') at character 3; "
    "send UTF-8 text, with any \\ud800-\\udfff escape as half of a surrogate pair"
)


@pytest.fixture(scope="module")
def http(frontend):
    with httpx.Client(base_url=frontend.http_url, timeout=30) as client:
        yield client


def post_raw(http, path, raw: bytes, content_type="application/json"):
    return http.post(path, content=raw, headers={"content-type": content_type})


def assert_error(r, status: int, message: str):
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": None,
            "code": status,
        }
    }


@pytest.mark.parametrize(
    "path,raw,message",
    [
        (
            "/v1/completions",
            rb'{"prompt": "hi \ud800", "max_tokens": 1}',
            "prompt " + SURROGATE_FIX,
        ),
        (
            "/v1/chat/completions",
            rb'{"messages": [{"role": "user", "content": "hi \ud800"}]}',
            "messages[0].content " + SURROGATE_FIX,
        ),
        (
            "/v1/chat/completions",
            rb'{"messages": [{"role": "user", "content": '
            rb'[{"type": "text", "text": "hi \ud800"}]}]}',
            "messages[0].content " + SURROGATE_FIX,
        ),
        (
            "/v1/completions",
            rb'{"prompt": "hi", "stop": ["ok", "hi \ud800"]}',
            "stop strings must be valid Unicode: 'hi \\ud800' has a lone surrogate at index 3",
        ),
        # The surrogate as UTF-8 bytes rather than an escape: Python's JSON reader passes it too.
        ("/v1/completions", b'{"prompt": "hi \xed\xa0\x80"}', "prompt " + SURROGATE_FIX),
    ],
)
def test_lone_surrogates_get_400_saying_what_to_fix(http, frontend, path, raw, message):
    assert_error(post_raw(http, path, raw), 400, message)
    assert frontend.dispatcher.violations == []


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("stream", "yes", "stream: Input should be a valid boolean"),
        ("max_tokens", True, "max_tokens: Input should be a valid integer"),
        ("max_tokens", 2.0, "max_tokens: Input should be a valid integer"),
        ("seed", "7", "seed: Input should be a valid integer"),
        ("temperature", "0.5", "temperature: Input should be a valid number"),
        ("temperature", False, "temperature: Input should be a valid number"),
        ("ignore_eos", 1, "ignore_eos: Input should be a valid boolean"),
        ("stop_token_ids", [1, "2"], "stop_token_ids.1: Input should be a valid integer"),
        (
            "stream_options",
            {"include_usage": "true"},
            "stream_options.include_usage: Input should be a valid boolean",
        ),
        (
            "prompt",
            5,
            "prompt: must be a string, a list of token ids, or a list holding one of those",
        ),
        ("stop", [1], "stop: must be a string or a list of strings"),
    ],
)
def test_strict_types_name_the_field(http, field, value, message):
    body = {"prompt": "hi", "max_tokens": 1, field: value}
    assert_error(http.post("/v1/completions", json=body), 400, message)


def test_ints_for_float_fields_are_fine(http):
    r = http.post(
        "/v1/completions",
        json={"prompt": "hi", "max_tokens": 2, "temperature": 1, "top_p": 1, "min_p": 0},
    )
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize(
    "field,value,message",
    [
        (
            "top_k",
            2**63,
            "top_k must be an int >= 1 and <= 2147483647, or 0 or -1 to disable, "
            "got 9223372036854775808",
        ),
        (
            "top_k",
            2**31,
            "top_k must be an int >= 1 and <= 2147483647, or 0 or -1 to disable, got 2147483648",
        ),
        (
            "seed",
            2**63,
            "seed must be None or an int in [-9223372036854775808, "
            "9223372036854775807], got 9223372036854775808",
        ),
        (
            "seed",
            -(2**63) - 1,
            "seed must be None or an int in [-9223372036854775808, "
            "9223372036854775807], got -9223372036854775809",
        ),
        (
            "stop_token_ids",
            [2**32],
            "stop_token_ids must contain only ints >= 0 and <= 4294967295,"
            " got 4294967296 in (4294967296,)",
        ),
        ("stop_token_ids", [5, 320], "stop_token_ids must be token ids in [0, 320), got [320]"),
        ("max_tokens", 2**32, "max_tokens must be an int >= 1 and <= 4294967295, got 4294967296"),
        (
            "max_tokens",
            10**40,
            "max_tokens must be an int >= 1 and <= 4294967295, got " + "1" + "0" * 40,
        ),
    ],
)
def test_integers_past_what_the_engine_and_wire_hold_get_400(http, frontend, field, value, message):
    r = http.post("/v1/completions", json={"prompt": "hi", field: value})
    assert_error(r, 400, message)
    assert frontend.dispatcher.violations == []


def test_integers_at_the_bounds_run(http, frontend):
    body = {
        "prompt": "hi",
        "max_tokens": 1,
        "top_k": 2**31 - 1,
        "seed": -(2**63),
        "stop_token_ids": [0, 319],
    }
    assert http.post("/v1/completions", json=body).status_code == 200
    p = frontend.dispatcher.admitted[-1].params
    assert (p.top_k, p.seed, p.stop_token_ids) == (2147483647, -9223372036854775808, (0, 319))


@pytest.mark.parametrize(
    "raw,message",
    [
        (
            b"",
            "the body is not valid JSON (Expecting value: line 1 column 1 (char 0)): send one "
            "JSON object",
        ),
        (
            b"prompt=hi",
            "the body is not valid JSON (Expecting value: line 1 column 1 (char 0)): "
            "send one JSON object",
        ),
        (
            b'{"prompt": "hi",}',
            "the body is not valid JSON (Expecting property name enclosed in "
            "double quotes: line 1 column 17 (char 16)): send one JSON object",
        ),
        (b'["hi"]', "the body must be a JSON object, got a JSON array"),
        (b'"hi"', "the body must be a JSON object, got a JSON string"),
        (b"null", "the body must be a JSON object, got a JSON null"),
        (b"1e999", "the body must be a JSON object, got a JSON number"),
        (
            b'{"prompt": "hi", "temperature": NaN}',
            "the body is not valid JSON (NaN is not a JSON number): send one JSON object",
        ),
        (
            b'{"prompt": "hi", "temperature": -Infinity}',
            "the body is not valid JSON (-Infinity is not a JSON number): send one JSON object",
        ),
        (b'{"prompt": "hi", "temperature": 1e999}', "temperature: Input should be a finite number"),
        (
            b'{"prompt": "hi", "max_tokens": 1' + b"0" * 5000 + b"}",
            "the body is not valid JSON (an integer literal has too many digits): send one JSON "
            "object",
        ),
        (
            b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            "the body nests arrays or objects too deeply",
        ),
        (
            b'{"prompt": "\xff"}',
            "the body is not valid JSON ('utf-8' codec can't decode byte 0xff "
            "in position 12: invalid start byte): send one JSON object",
        ),
        (b"{}", "prompt: Field required"),
        (b'{"prompt": "hi", "n": 17}', "n must be an int in [1, 16], got 17"),
    ],
)
def test_malformed_bodies_get_400_json(http, raw, message):
    assert_error(post_raw(http, "/v1/completions", raw), 400, message)


def test_chat_content_parts_must_be_text_strings(http):
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": ["nested"]}]}]}
    assert_error(
        http.post("/v1/chat/completions", json=body),
        400,
        "messages[0].content parts must all be {type: text, text: <string>}",
    )


def test_json_in_another_encoding_or_type_is_read(http):
    body = json.dumps({"prompt": "hi", "max_tokens": 1})
    assert post_raw(http, "/v1/completions", body.encode("utf-16")).status_code == 200
    r = post_raw(http, "/v1/completions", body.encode(), "application/json; charset=utf-8")
    assert r.status_code == 200
    assert http.post("/v1/completions", content=body.encode()).status_code == 200  # no type


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_other_content_types_get_415(http, content_type):
    r = post_raw(http, "/v1/completions", b'{"prompt": "hi"}', content_type)
    assert_error(
        r, 415, f"send the body as JSON with 'Content-Type: application/json', not {content_type!r}"
    )


def test_a_body_past_the_limit_gets_413(http, tiny_preparer):
    limit = tiny_preparer.limits.max_request_bytes
    assert limit == 8 << 20
    raw = b'{"prompt": "' + b"a" * limit + b'"}'
    assert_error(
        post_raw(http, "/v1/completions", raw), 413, "the request body is larger than 8388608 bytes"
    )

    def chunked():  # no Content-Length: counted as it arrives
        yield raw[: 1 << 20]
        yield raw[1 << 20 :]

    assert_error(
        http.post("/v1/completions", content=chunked()),
        413,
        "the request body is larger than 8388608 bytes",
    )
    assert http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1}).status_code == 200


def test_a_prompt_longer_than_the_context_can_hold_is_refused_before_tokenizing(http):
    # tiny vocabulary: its longest token has 7 characters; the context is 128 tokens
    r = http.post("/v1/completions", json={"prompt": "a" * 897})
    assert_error(
        r,
        400,
        "prompt has 897 characters, more than the 896 that can fit the "
        "context of 128 tokens: shorten the prompt",
    )
    r = http.post(
        "/v1/chat/completions",
        json={
            "messages": [
                {"role": "system", "content": "a" * 500},
                {"role": "user", "content": "b" * 397},
            ]
        },
    )
    assert_error(
        r,
        400,
        "the messages' content has 897 characters, more than the 896 that "
        "can fit the context of 128 tokens: shorten the prompt",
    )


def test_unknown_routes_get_json_errors(http):
    r = http.post("/v1/embeddings", json={})
    assert r.status_code == 404 and r.json()["error"]["code"] == 404
    r = http.get("/v1/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == 405


def test_models_and_health_answer_while_a_prompt_is_being_tokenized(tiny_preparer):
    tok = BlockingTokenizer(tiny_preparer.tokenizer)
    preparer = RequestPreparer(tok, "tiny", tiny_preparer.model_path, 128)
    with FakeFrontend(preparer) as server, ThreadPoolExecutor(1) as pool:
        try:
            slow = pool.submit(
                httpx.post,
                f"{server.http_url}/v1/completions",
                json={"prompt": "block", "max_tokens": 1},
                timeout=30,
            )
            assert tok.entered.wait(10)
            models = httpx.get(f"{server.http_url}/v1/models", timeout=5)
            health = httpx.get(f"{server.http_url}/health", timeout=5)
            assert tok.inside, "the tokenizer let go before the other requests were answered"
        finally:
            tok.release.set()
        assert models.json()["data"][0]["id"] == "tiny" and health.status_code == 200
        assert slow.result().status_code == 200


class FailingMidStream:
    """A dispatcher whose stream breaks after its first token (a bug, not a ServingError)."""

    workers: dict = {}

    async def poll_loads(self):
        return []

    async def generate(self, req, client_key="", deadline_s=None):
        yield GenerationChunk(req.request_id, [7], "a")
        raise RuntimeError("boom")


def test_a_stream_that_breaks_ends_with_an_error_event_not_a_dropped_connection(tiny_preparer):
    with FakeFrontend(tiny_preparer, dispatcher=FailingMidStream()) as server:
        r = httpx.post(
            f"{server.http_url}/v1/completions",
            timeout=30,
            json={"prompt": "hi", "max_tokens": 4, "stream": True},
        )
    events = [e.removeprefix("data: ") for e in r.text.split("\n\n") if e]
    assert r.status_code == 200 and events[-1] == "[DONE]"
    assert json.loads(events[0])["choices"][0]["text"] == "a"
    assert json.loads(events[1]) == {
        "error": {"message": "internal error", "type": "server_error", "param": None, "code": 500}
    }
