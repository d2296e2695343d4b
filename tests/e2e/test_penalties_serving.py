"""Penalties, logit_bias and min_tokens through the OpenAI HTTP API on 1 prefill + 1 decode
worker: the KV handoff carries them, so the decode worker continues as the colocated engine
does with the same parameters."""

from __future__ import annotations

import httpx
import pytest
from cluster_helpers import PROMPTS, wait_for_free_blocks
from tiny_model import make_engine

from runtime.engine import SamplingParams

MAX_TOKENS = 8
PENALTIES = dict(presence_penalty=1.0, frequency_penalty=0.5, logit_bias={"7": 3.0, "42": -2.0})
EXTRA = dict(repetition_penalty=1.5, min_tokens=MAX_TOKENS)


@pytest.fixture(scope="module")
def server(disaggregated_server):
    return disaggregated_server


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return make_engine(tiny_model_dir, num_threads=1)


def reference_text(engine, ids, **fields):
    fields = {**fields, "logit_bias": {int(k): v for k, v in fields.get("logit_bias", {}).items()}}
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, **fields)
    return engine.generate(prompt_token_ids=[ids], params=params)[0]


def test_openai_completions_and_chat_continue_with_the_penalties(server, engine, tiny_model_dir):
    import openai

    oai = openai.OpenAI(base_url=f"{server.http_url}/v1", api_key="unused", max_retries=0)
    ids = server.frontend.preparer.prompt_ids(prompt=PROMPTS[0])
    plain = reference_text(engine, ids)
    penalised = reference_text(engine, ids, **PENALTIES, **EXTRA)
    assert penalised.text != plain.text and len(penalised.token_ids) == MAX_TOKENS
    out = oai.completions.create(
        model=str(tiny_model_dir),
        prompt=PROMPTS[0],
        max_tokens=MAX_TOKENS,
        temperature=0,
        extra_body=EXTRA,
        **PENALTIES,
    )
    assert out.choices[0].text == penalised.text
    assert out.usage.completion_tokens == MAX_TOKENS

    messages = [{"role": "user", "content": "Hello world!"}]
    chat_ids = server.frontend.preparer.prompt_ids(messages=messages)
    chat = oai.chat.completions.create(
        model=str(tiny_model_dir),
        messages=messages,
        max_tokens=MAX_TOKENS,
        temperature=0,
        extra_body=EXTRA,
        **PENALTIES,
    )
    assert (
        chat.choices[0].message.content
        == reference_text(engine, chat_ids, **PENALTIES, **EXTRA).text
    )


def test_min_tokens_holds_back_eos_past_the_handoff(server, engine):
    eos = server.frontend.preparer.tokenizer.eos_token_id
    body = {"prompt": PROMPTS[1], "max_tokens": MAX_TOKENS, "temperature": 0}
    body["logit_bias"] = {str(eos): 100}  # EOS at once, unless held back
    url = f"{server.http_url}/v1/completions"
    r = httpx.post(url, json=body, timeout=60).json()
    assert (r["usage"]["completion_tokens"], r["choices"][0]["finish_reason"]) == (1, "stop")
    r = httpx.post(url, json={**body, "min_tokens": 4}, timeout=60).json()
    # Four tokens (the first from the prefill worker, three from the decode worker), then EOS.
    assert (r["usage"]["completion_tokens"], r["choices"][0]["finish_reason"]) == (5, "stop")
    ids = server.frontend.preparer.prompt_ids(prompt=PROMPTS[1])
    expected = reference_text(engine, ids, logit_bias={eos: 100}, min_tokens=4)
    assert expected.token_ids[-1] == eos and r["choices"][0]["text"] == expected.text


def test_bad_values_get_400_and_free_everything(server):
    url = f"{server.http_url}/v1/completions"
    r = httpx.post(url, json={"prompt": "hi", "logit_bias": {"x": 1}}, timeout=60)
    assert r.status_code == 400 and "logit_bias keys" in r.json()["error"]["message"]
    r = httpx.post(url, json={"prompt": "hi", "presence_penalty": 9}, timeout=60)
    assert r.status_code == 400 and "presence_penalty" in r.json()["error"]["message"]
    ok = httpx.post(url, json={"prompt": "hi", "max_tokens": 2, "min_tokens": 2}, timeout=60)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2
    assert set(wait_for_free_blocks(server).values()) == {256}
