"""/tokenize, /detokenize, /version and /v1/models against the tokenizer itself, and OpenAI
error objects for every error: unknown routes, wrong methods, bad input."""

import httpx
import pytest
from fake_frontend import FakeFrontend

from runtime.frontend.tokenization import API_VERSION
from runtime.kv_transfer.wire import CONTRACT_VERSION

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]


@pytest.fixture(scope="module")
def http(frontend):
    with httpx.Client(base_url=frontend.http_url, timeout=30) as client:
        yield client


def test_tokenize_a_prompt_as_completions_would(http, tiny_preparer):
    tok = tiny_preparer.tokenizer
    want = tok.encode("The quick brown fox")
    r = http.post("/tokenize", json={"prompt": "The quick brown fox", "return_token_strs": True})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "count": len(want),
        "max_model_len": 128,
        "tokens": want,
        "token_strs": tok.convert_ids_to_tokens(want),
    }
    # What /tokenize reports is what a completion runs on.
    http.post("/v1/completions", json={"prompt": "The quick brown fox", "max_tokens": 1})


def test_tokenize_messages_applies_the_chat_template(http, frontend, tiny_preparer):
    tok = tiny_preparer.tokenizer
    text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    want = tok.encode(text, add_special_tokens=False)
    r = http.post("/tokenize", json={"model": "tiny", "messages": CHAT})
    assert r.json() == {"count": len(want), "max_model_len": 128, "tokens": want}
    http.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 1})
    assert list(frontend.dispatcher.admitted[-1].prompt_token_ids) == want


def test_detokenize_round_trips(http, tiny_preparer):
    ids = tiny_preparer.tokenizer.encode("Paged attention keeps")
    r = http.post("/detokenize", json={"tokens": ids})
    assert r.json() == {"prompt": tiny_preparer.tokenizer.decode(ids)}
    assert "Paged attention keeps" in r.json()["prompt"]


@pytest.mark.parametrize(
    "path,body,message",
    [
        ("/tokenize", {"prompt": "a", "messages": CHAT}, "give exactly one of prompt or messages"),
        ("/tokenize", {}, "give exactly one of prompt or messages"),
        ("/tokenize", {"prompt": ""}, "prompt is empty: send a non-empty prompt"),
        ("/tokenize", {"prompt": "a", "model": "gpt-4"}, "unknown model 'gpt-4'"),
        ("/detokenize", {"tokens": [1, -1]}, "tokens must be ids in [0, "),
        ("/detokenize", {"tokens": "abc"}, "tokens: Input should be a valid list"),
        ("/detokenize", {"tokens": [1] * 129}, "129 tokens: at most max_model_len=128"),
    ],
)
def test_bad_tokenizer_requests_get_400(http, path, body, message):
    r = http.post(path, json=body)
    assert r.status_code == 400 and message in r.json()["error"]["message"], r.text


def test_tokenizer_endpoints_refuse_unknown_fields(http):
    r = http.post("/tokenize", json={"prompt": "a", "add_special_tokens": False})
    assert r.status_code == 400 and r.json()["error"]["param"] == "add_special_tokens"


def test_version_and_models(http, tiny_preparer):
    v = http.get("/version").json()
    assert v["api"] == API_VERSION and v["kv_contract_version"] == CONTRACT_VERSION
    assert v["version"].count(".") >= 1 or v["version"] == "0+unknown"
    [model] = http.get("/v1/models").json()["data"]
    assert (model["id"], model["max_model_len"]) == ("tiny", tiny_preparer.max_model_len)


def test_every_error_is_an_openai_error_object(http):
    for r, status in [
        (http.get("/v1/nowhere"), 404),
        (http.get("/tokenize"), 405),
        (http.delete("/v1/chat/completions"), 405),
        (http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 0}), 400),
    ]:
        assert r.status_code == status
        error = r.json()["error"]
        assert error["code"] == status and error["type"] and error["message"]


def test_the_tokenizer_endpoints_need_the_api_key_and_health_does_not(tiny_preparer):
    with FakeFrontend(tiny_preparer, api_key="k") as server:
        url = server.http_url
        assert httpx.post(f"{url}/tokenize", json={"prompt": "a"}).status_code == 401
        assert httpx.post(f"{url}/detokenize", json={"tokens": [1]}).status_code == 401
        ok = httpx.post(
            f"{url}/tokenize", json={"prompt": "a"}, headers={"authorization": "Bearer k"}
        )
        assert ok.status_code == 200
        assert httpx.get(f"{url}/health").status_code == 200
        assert httpx.get(f"{url}/version").status_code == 200
