"""Structured output through the OpenAI HTTP API on the default SmolLM2, disaggregated: the
grammar's matcher is built on the prefill worker and rebuilt on the decode worker."""

from __future__ import annotations

import asyncio
import json
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import pytest
from cluster_helpers import default_model_cluster_config

from runtime.client import AsyncClient, Client, InvalidArgumentError
from runtime.cluster.background import BackgroundServer

pytestmark = [pytest.mark.model]

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "maxLength": 24},
        "hobbies": {
            "type": "array",
            "items": {"enum": ["reading", "chess", "hiking", "cooking", "music"]},
            "maxItems": 3,
        },
        "employed": {"type": "boolean"},
    },
    "required": ["name", "age", "city", "hobbies", "employed"],
    "additionalProperties": False,
}
PEOPLE = [
    "a retired teacher from Lyon",
    "a young chess champion",
    "a chef who loves hiking",
    "a software engineer in Berlin",
    "a jazz pianist",
    "a nurse from Toronto",
    "a student who reads a lot",
    "a farmer in Kansas",
    "an astronaut",
    "a painter living in Rome",
    "a marathon runner",
    "a librarian from Oslo",
    "a teenage guitarist",
    "a doctor in Madrid",
    "a baker from Vienna",
    "a mountain guide",
    "a retired pilot",
    "a poet from Dublin",
    "a carpenter in Austin",
    "a museum curator",
]


@pytest.fixture(scope="module")
def server(default_model_dir):
    config = default_model_cluster_config(default_model_dir)
    with BackgroundServer(config) as server:
        yield server


def chat(server, content: str, **fields) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 120, **fields}
    return httpx.post(f"{server.http_url}/v1/chat/completions", json=body, timeout=600)


def test_json_schema_output_validates_for_20_prompts(server):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}

    def ask(person: str) -> dict:
        r = chat(server, f"Describe {person} as JSON.", response_format=fmt, temperature=0)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]

    with ThreadPoolExecutor(len(PEOPLE)) as pool:
        choices = list(pool.map(ask, PEOPLE))
    outputs = []
    for person, choice in zip(PEOPLE, choices):
        assert choice["finish_reason"] == "stop", (person, choice)
        value = json.loads(choice["message"]["content"])
        jsonschema.validate(value, SCHEMA)
        outputs.append(value)
    assert len({json.dumps(v) for v in outputs}) > 1  # the prompts still steer the answers


def test_vllm_guided_fields(server):
    r = chat(server, "Is the sky blue?", guided_choice=["yes", "no"], temperature=0)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] in ("yes", "no")
    r = chat(server, "Pick a time.", guided_regex=r"[0-2][0-9]:[0-5][0-9]", temperature=0.8, seed=3)
    assert re.fullmatch(r"[0-2][0-9]:[0-5][0-9]", r.json()["choices"][0]["message"]["content"])
    r = httpx.post(
        f"{server.http_url}/v1/completions",
        json={
            "prompt": "A JSON object:",
            "max_tokens": 60,
            "response_format": {"type": "json_object"},
        },
        timeout=600,
    )
    text = r.json()["choices"][0]["text"]
    assert text.startswith("{"), text


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"guided_regex": "[a-z"}, "guided_regex: invalid regex"),
        ({"guided_json": {"type": "bogus"}}, "guided_json: invalid json_schema"),
        ({"guided_json": "{oops"}, "guided_json is not valid JSON"),
        ({"guided_choice": []}, "guided_choice: choice must be a non-empty list"),
        (
            {"response_format": {"type": "json_schema"}},
            "response_format.json_schema is required",
        ),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        (
            {"guided_regex": "a", "guided_choice": ["a"]},
            "at most one structured-output constraint, got guided_regex, guided_choice",
        ),
        ({"guided_regex": "a" * 40000}, "guided_regex has 40000 characters"),
    ],
)
def test_bad_grammars_are_400_naming_the_field(server, fields, says):
    r = chat(server, "hi", **fields)
    assert r.status_code == 400, r.text
    assert says in r.json()["error"]["message"]
    assert chat(server, "hi", max_tokens=2).status_code == 200  # still serving


def test_grpc_sdk_sync_and_async(server):
    messages = [{"role": "user", "content": "Describe a pirate as JSON."}]
    with Client(server.grpc_url, timeout=600) as client:
        out = client.generate(messages=messages, max_tokens=120, temperature=0, guided_json=SCHEMA)
        assert out.finish_reason == "stop"
        jsonschema.validate(json.loads(out.text), SCHEMA)
        with pytest.raises(InvalidArgumentError, match="params.guided_regex: invalid regex"):
            client.generate("hi", guided_regex="(")

    async def run():
        async with AsyncClient(server.grpc_url, timeout=600) as client:
            return await asyncio.gather(
                client.generate("Yes or no?", max_tokens=8, guided_choice=["yes", "no"]),
                client.generate("Data:", max_tokens=60, temperature=0, json_object=True),
            )

    choice, obj = asyncio.run(run())
    assert choice.text in ("yes", "no") and choice.finish_reason == "stop"
    assert obj.text.startswith("{")
