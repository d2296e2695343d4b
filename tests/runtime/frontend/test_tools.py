"""Tool calling over the OpenAI HTTP API: a tiny model whose chat template renders tools in
the Qwen2.5 (Hermes) convention, a real in-process engine behind the frontend, and the grammar
that forces a call when tool_choice asks for one."""

import asyncio
import json

import httpx
import jsonschema
import pytest
from fake_frontend import FakeFrontend
from tiny_model import make_engine, make_tiny_model

from runtime.client import AsyncClient, Client, InvalidArgumentError
from runtime.frontend.requests import InvalidRequest, RequestPreparer
from runtime.frontend.results import GenerationChunk, Timings, Usage
from runtime.frontend.tools import ToolUse, tool_call_style

# A Hermes-style template in the Qwen2.5 convention, written for this test.
HERMES_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\nYou may call these functions:\n<tools>"
    "{%- for t in tools %}\n{{ t | tojson }}{%- endfor %}\n</tools>\n"
    'Call one as <tool_call>{"name": <name>, "arguments": <args>}</tool_call><|im_end|>\n'
    "{% endif %}"
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n"
    "{%- if m.tool_calls %}{% for c in m.tool_calls %}"
    '<tool_call>{"name": "{{ c.function.name }}", "arguments": '
    "{{ c.function.arguments | tojson }}}</tool_call>{% endfor %}"
    "{%- else %}{{ m.content }}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"enum": ["Paris", "Oslo", "Lima"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"enum": ["UTC", "CET"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Oslo?"}]


@pytest.fixture(scope="module")
def hermes_model_dir(tmp_path_factory):
    # A longer context than the shared tiny model's: its byte-level vocabulary spends a token
    # on about every character of the tools' JSON.
    path = make_tiny_model(tmp_path_factory.mktemp("tiny-hermes"), max_position_embeddings=2048)
    (path / "chat_template.jinja").write_text(HERMES_TEMPLATE)
    return path


class EngineDispatcher:
    """A real colocated engine on the event loop's thread: each request runs to its end
    before the next (the test sends them one at a time)."""

    mode = "colocated"

    def __init__(self, model_dir):
        self.engine = make_engine(model_dir, num_threads=1)
        self.workers: dict = {}
        self.num_in_flight = 0

    async def poll_loads(self) -> list:
        return []

    async def generate(self, req, client_key: str = "", deadline_s=None):
        outs = list(
            self.engine.stream(prompt_token_ids=list(req.prompt_token_ids), params=req.params)
        )
        for out in outs:
            done = out.finished
            yield GenerationChunk(
                req.request_id,
                out.new_token_ids,
                out.delta_text,
                out.finish_reason if done else None,
                Usage(len(out.prompt_token_ids), len(out.token_ids)) if done else None,
                Timings() if done else None,
            )


@pytest.fixture(scope="module")
def preparer(hermes_model_dir):
    return RequestPreparer.for_model("tiny", str(hermes_model_dir), max_model_len=2048)


@pytest.fixture(scope="module")
def frontend(preparer, hermes_model_dir):
    with FakeFrontend(preparer, dispatcher=EngineDispatcher(hermes_model_dir)) as f:
        yield f


def chat(frontend, **body) -> httpx.Response:
    body = {"messages": ASK, "max_tokens": 60, "temperature": 0, **body}
    return httpx.post(f"{frontend.http_url}/v1/chat/completions", json=body, timeout=120)


def test_the_template_renders_the_tools_and_earlier_calls(preparer):
    history = ASK + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "cold"},
    ]
    text = preparer.render_chat(history, [WEATHER])
    assert "<tools>" + json.dumps(WEATHER) + "</tools>" in text
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}' in text
    assert "<|im_start|>toolcold<|im_end|>" in text
    assert "<tools>" not in preparer.render_chat(ASK)


def test_a_named_tool_choice_returns_a_call_with_valid_arguments(frontend):
    choice = {"type": "function", "function": {"name": "get_weather"}}
    r = chat(frontend, tools=[WEATHER, CLOCK], tool_choice=choice)
    assert r.status_code == 200, r.text
    out = r.json()["choices"][0]
    assert out["finish_reason"] == "stop"
    (call,) = out["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    jsonschema.validate(
        json.loads(call["function"]["arguments"]), WEATHER["function"]["parameters"]
    )
    assert out["message"]["content"] is None


def test_required_tool_choice_calls_one_or_more_tools(frontend):
    r = chat(
        frontend,
        tools=[WEATHER, CLOCK],
        tool_choice="required",
        temperature=1.0,
        seed=2,
        max_tokens=400,
    )
    out = r.json()["choices"][0]
    assert out["finish_reason"] == "tool_calls", out
    tools = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, CLOCK)}
    for call in out["message"]["tool_calls"]:
        jsonschema.validate(
            json.loads(call["function"]["arguments"]), tools[call["function"]["name"]]
        )


def test_streamed_tool_calls_arrive_in_the_last_chunk(frontend):
    choice = {"type": "function", "function": {"name": "get_time"}}
    body = {"messages": ASK, "max_tokens": 40, "temperature": 0, "stream": True}
    with httpx.stream(
        "POST",
        f"{frontend.http_url}/v1/chat/completions",
        json={**body, "tools": [CLOCK], "tool_choice": choice},
        timeout=120,
    ) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    last = events[-1]["choices"][0]
    (call,) = last["delta"]["tool_calls"]
    assert call["index"] == 0 and call["function"]["name"] == "get_time"
    assert json.loads(call["function"]["arguments"])["zone"] in ("UTC", "CET")


def test_auto_and_none_leave_the_output_free(frontend):
    for choice in ("auto", "none"):
        out = chat(frontend, tools=[WEATHER], tool_choice=choice, max_tokens=5).json()
        assert out["choices"][0]["finish_reason"] == "length"
        assert "tool_calls" not in out["choices"][0]["message"]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice.function.name 'x' is not among the tools ['get_weather']",
        ),
        ({"tool_choice": "required"}, "tool_choice needs tools"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice: must be"),
        ({"tools": [WEATHER, WEATHER]}, "function names must be unique"),
        (
            {"tools": [WEATHER], "tool_choice": "required", "guided_regex": "a"},
            "at most one structured-output constraint",
        ),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools.0.function.name"),
    ],
)
def test_bad_tool_requests_are_400(frontend, body, says):
    r = chat(frontend, **body)
    assert r.status_code == 400, r.text
    assert says in r.json()["error"]["message"]


def test_a_template_without_tools_refuses_them(tiny_model_dir):
    preparer = RequestPreparer.for_model("tiny", str(tiny_model_dir), max_model_len=512)
    assert tool_call_style(preparer.tokenizer.chat_template) is None
    with pytest.raises(InvalidRequest, match="does not render tools"):
        ToolUse.from_request([WEATHER], "auto", preparer.tokenizer.chat_template)


def test_parsing_auto_output():
    hermes = ToolUse((WEATHER,), "auto", "hermes")
    content, calls = hermes.parse(
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", '
        '"days": 2}}\n</tool_call>'
    )
    assert content == "Let me check."
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("get_weather", {"city": "Oslo", "days": 2})
    ]
    assert hermes.parse("no call here") == ("no call here", [])
    assert hermes.parse("<tool_call>{broken</tool_call>") == ("<tool_call>{broken</tool_call>", [])
    llama = ToolUse((WEATHER,), "auto", "llama3_json")
    _, calls = llama.parse('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Lima"}}')
    assert calls[0]["function"]["arguments"] == '{"city": "Lima"}'
    assert llama.parse("It is sunny.") == ("It is sunny.", [])
    assert tool_call_style("{% if tools %}<|python_tag|>{% endif %}") == "llama3_json"


def test_grpc_sdk_sync_and_async_call_tools(frontend):
    with Client(frontend.grpc_url, timeout=120) as client:
        out = client.chat(
            ASK, max_tokens=60, temperature=0, tools=[WEATHER], tool_choice="get_weather"
        )
        assert out.finish_reason == "stop"
        (call,) = out.tool_calls
        assert call.name == "get_weather" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.arguments), WEATHER["function"]["parameters"])
        with pytest.raises(InvalidArgumentError, match="tools need chat input"):
            client.generate("hi", tools=[WEATHER])
        with pytest.raises(InvalidArgumentError, match="must be a JSON schema object"):
            client.chat(ASK, tools=[{"name": "f", "parameters": "{"}])

    async def run():
        async with AsyncClient(frontend.grpc_url, timeout=120) as client:
            return await client.chat(
                ASK,
                max_tokens=400,
                temperature=1.0,
                seed=2,
                tools=[WEATHER, CLOCK],
                tool_choice="required",
            )

    out = asyncio.run(run())
    assert out.finish_reason == "tool_calls" and out.tool_calls
    assert {c.name for c in out.tool_calls} <= {"get_weather", "get_time"}


def test_a_tool_conversation_continues_over_grpc_as_over_http(frontend):
    # The SDK takes the calls a completion returned (or OpenAI dicts) in an assistant turn,
    # and the tool's answer by its call id; the prompt is the one HTTP renders.
    with Client(frontend.grpc_url, timeout=120) as client:
        first = client.chat(
            ASK, max_tokens=60, temperature=0, tools=[WEATHER], tool_choice="required"
        )
        (call,) = first.tool_calls[:1]
        history = ASK + [
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call.id, "content": "cold"},
        ]
        as_openai = ASK + [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    }
                ],
            },
            history[-1],
        ]
        over_grpc = client.tokenize(messages=history).token_ids
        over_http = httpx.post(
            f"{frontend.http_url}/tokenize", json={"messages": as_openai}, timeout=60
        ).json()["tokens"]
        text = client.detokenize(over_grpc)
        assert f'<tool_call>{{"name": "{call.name}", "arguments": ' in text
        assert "<|im_start|>toolcold<|im_end|>" in text
        assert over_grpc == over_http
        assert client.tokenize(messages=as_openai).token_ids == over_grpc
        answer = client.chat(history, max_tokens=5, temperature=0)
        assert answer.usage.prompt_tokens == len(over_grpc)
