"""Fuzzing the public API of a running server: hypothesis strategies for HTTP bodies and gRPC
messages, and the checks every answer must pass (a 4xx / INVALID_ARGUMENT with a message, or
a well-formed success; never a 5xx, a dropped connection or a hang).

Shared by the in-process slice (tests/runtime/frontend/test_api_fuzz.py, `make test`) and
the whole-cluster run (tests/e2e/test_fuzz_api.py, `make fuzz`).
"""

from __future__ import annotations

import json
from collections import Counter

import grpc
import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.api._proto import tandem_pb2 as pb

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
INT_EDGES = [
    0,
    1,
    -1,
    2,
    255,
    320,
    2**31 - 1,
    2**31,
    -(2**31) - 1,
    2**32 - 1,
    2**32,
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    2**64,
    10**30,
    -(10**30),
]
HTTP_OK = {200, 400, 413, 415}
GRPC_OK = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}
TIMEOUT_S = 60

# Any text, lone surrogates included (JSON escapes them as \udXXX).
any_text = st.text(st.characters(exclude_categories=()), max_size=24)
# Text a client can legitimately send (and protobuf can carry).
clean_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=24)
any_int = st.one_of(st.sampled_from(INT_EDGES), st.integers())
any_float = st.one_of(st.floats(), st.sampled_from([0.0, -0.0, 1.0, 1e-9, 1e308, 2.0, 0.5]))
json_leaf = st.one_of(st.none(), st.booleans(), any_int, any_float, any_text)
json_any = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=10,
)
small_max_tokens = st.integers(1, 4)
_short_text = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=8)


def _field(plausible):
    """A field's value: mostly plausible (so requests get deep), sometimes anything."""
    return st.one_of(plausible, plausible, json_any)


def _sampling_fields(model: str) -> dict:
    return {
        "model": _field(st.sampled_from([model, "", "gpt-4"])),
        "max_tokens": _field(st.one_of(small_max_tokens, any_int)),
        "temperature": _field(st.one_of(st.floats(0, 2), any_float)),
        "top_p": _field(st.one_of(st.floats(0, 1), any_float)),
        "top_k": _field(st.one_of(st.sampled_from([-1, 0, 1, 5]), any_int)),
        "min_p": _field(st.one_of(st.floats(0, 1), any_float)),
        "seed": _field(any_int),
        "n": _field(st.sampled_from([1, 2, 0])),
        "stream": _field(st.booleans()),
        "stream_options": _field(st.fixed_dictionaries({"include_usage": st.booleans()})),
        "stop": _field(st.one_of(any_text, st.lists(any_text, max_size=20))),
        "stop_token_ids": _field(st.lists(any_int, max_size=8)),
        "ignore_eos": _field(st.booleans()),
        "include_stop_str_in_output": _field(st.booleans()),
        "skip_special_tokens": _field(st.booleans()),
        "logit_bias": json_any,
        "user": json_any,  # OpenAI fields we ignore
    }


def _long_text(n_chars: int):
    return st.builds(
        lambda c, n: c * n, st.sampled_from(["a", " ", "\u4e2d", "ab "]), st.integers(1, n_chars)
    )


@st.composite
def _one_field_off(draw, valid, fields: dict) -> dict:
    """A valid body with one to three fields set to hostile values or removed: every check
    of the edge gets reached, not only the first one a random body trips."""
    body = dict(draw(valid))
    for name in draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=3)):
        if draw(st.integers(0, 5)) == 0:
            body.pop(name, None)
        else:
            body[name] = draw(fields[name])
    return body


def completion_bodies(model: str, vocab_size: int):
    prompt = st.one_of(
        any_text,
        _long_text(2000),
        st.lists(any_int, max_size=8),
        st.lists(st.integers(0, vocab_size - 1), min_size=1, max_size=8),
        st.lists(any_text, max_size=2),
        st.lists(st.lists(any_int), max_size=2),
    )
    fields = {"prompt": _field(prompt), "echo": json_any, **_sampling_fields(model)}
    return st.one_of(
        st.fixed_dictionaries({}, optional=fields),
        _one_field_off(valid_completion_bodies(model, vocab_size), fields),
    )


def chat_bodies(model: str):
    role = st.one_of(st.sampled_from(["system", "user", "assistant", "tool"]), any_text)
    part = st.fixed_dictionaries({"type": _field(st.just("text")), "text": _field(any_text)})
    content = st.one_of(any_text, st.lists(part, max_size=3), _long_text(2000))
    message = st.fixed_dictionaries({}, optional={"role": _field(role), "content": _field(content)})
    fields = {
        "messages": _field(st.lists(_field(message), max_size=4)),
        "max_completion_tokens": _field(st.one_of(small_max_tokens, any_int)),
        **_sampling_fields(model),
    }
    valid = st.fixed_dictionaries(
        {
            "model": st.just(model),
            "max_tokens": small_max_tokens,
            "messages": st.lists(
                st.fixed_dictionaries({"role": st.just("user"), "content": _short_text}),
                min_size=1,
                max_size=2,
            ),
        }
    )
    return st.one_of(st.fixed_dictionaries({}, optional=fields), _one_field_off(valid, fields))


def valid_completion_bodies(model: str, vocab_size: int):
    """Requests the server must run (200): small prompts, every field in range."""
    ids = st.lists(st.integers(0, vocab_size - 1), max_size=16)
    return st.fixed_dictionaries(
        {
            "model": st.just(model),
            "max_tokens": small_max_tokens,
            "prompt": st.one_of(
                st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=8),
                st.lists(st.integers(0, vocab_size - 1), min_size=1, max_size=16),
            ),
        },
        optional={
            "temperature": st.floats(0, 2),
            "top_p": st.floats(0.01, 1),
            "min_p": st.floats(0, 1),
            "top_k": st.one_of(st.sampled_from([-1, 0, 2**31 - 1]), st.integers(1, 2**31 - 1)),
            "seed": st.integers(*INT64),
            "stream": st.booleans(),
            "ignore_eos": st.booleans(),
            "stop": st.lists(
                st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=256),
                max_size=16,
            ),
            "stop_token_ids": ids,
            "skip_special_tokens": st.booleans(),
        },
    )


@st.composite
def http_requests(draw, bodies) -> tuple[bytes, dict]:
    """A body drawn from `bodies`, usually as JSON, sometimes mangled; and its headers."""
    body = draw(bodies)
    text = json.dumps(body)
    how = draw(
        st.sampled_from(
            ["json"] * 20
            + ["truncated", "nan", "deep", "huge_int", "utf16", "bom", "bad_utf8", "bytes", "array"]
        )
    )
    raw = {
        "json": lambda: text.encode(),
        "truncated": lambda: text.encode()[: draw(st.integers(0, max(len(text) - 1, 0)))],
        "nan": lambda: text.replace("}", ', "temperature": NaN}', 1).encode(),
        "deep": lambda: b'{"prompt": ' + b"[" * draw(st.integers(100, 100_000)) + b"}",
        "huge_int": lambda: b'{"prompt": "hi", "max_tokens": 9' + b"9" * 5000 + b"}",
        "utf16": lambda: text.encode("utf-16"),
        "bom": lambda: b"\xef\xbb\xbf" + text.encode(),
        "bad_utf8": lambda: text.encode()[:-1] + b'\xff"}',
        "bytes": lambda: draw(st.binary(max_size=64)),
        "array": lambda: f"[{text}]".encode(),
    }[how]()
    kind = draw(
        st.sampled_from(
            ["application/json"] * 24
            + [
                None,
                "text/plain",
                "application/x-www-form-urlencoded",
                "application/json; charset=utf-8",
                "application/merge-patch+json",
                "multipart/form-data; boundary=x",
                "APPLICATION/JSON",
            ]
        )
    )
    return raw, ({"content-type": kind} if kind else {})


def as_json(bodies):
    return st.builds(
        lambda b: (json.dumps(b).encode(), {"content-type": "application/json"}), bodies
    )


def post(
    client: httpx.Client,
    path: str,
    raw: bytes,
    headers: dict,
    counts: Counter,
    expect_ok: bool = False,
) -> httpx.Response:
    """POST and check the answer: a JSON error body with a message for a 4xx, a complete
    response (every SSE event JSON, no error event, `[DONE]` last) for a 200."""
    r = client.post(path, content=raw, headers=headers, timeout=TIMEOUT_S)
    counts[f"POST {path} {r.status_code}"] += 1
    assert r.status_code in HTTP_OK, (r.status_code, r.text[:500], raw[:300])
    if r.status_code != 200:
        assert not expect_ok, (r.status_code, r.text[:500], raw[:300])
        err = r.json().get("error")
        assert err and err["code"] == r.status_code, r.text[:500]
        assert isinstance(err["message"], str) and err["message"], r.text[:500]
        return r
    if r.headers["content-type"].startswith("text/event-stream"):
        events = [e.removeprefix("data: ") for e in r.text.split("\n\n") if e]
        assert events[-1] == "[DONE]", r.text[-300:]
        for e in events[:-1]:
            assert "error" not in json.loads(e), e
    else:
        payload = r.json()
        assert payload["choices"][0]["finish_reason"] in ("stop", "length"), payload
        assert payload["usage"]["completion_tokens"] >= 1
    return r


# ----------------------------------------------------------------------------- gRPC

int32 = st.one_of(st.sampled_from([0, 1, -1, *INT32, 320, 16]), st.integers(*INT32))
int64 = st.one_of(st.sampled_from([0, -1, *INT64, 2**31, 2**32]), st.integers(*INT64))
double = st.one_of(st.floats(), st.floats(0, 2), st.sampled_from([0.0, 1.0, 1e308, -1.0]))


@st.composite
def generate_requests(draw, model: str, vocab_size: int, valid: bool = False) -> pb.GenerateRequest:
    """A GenerateRequest with any values its fields can carry; each part is in range with
    probability 3/4 (all of them when `valid`), so both deep and shallow checks get hit."""

    def pick(good, bad):
        return draw(good if valid or draw(st.integers(0, 3)) else st.one_of(good, bad))

    req = pb.GenerateRequest(
        model=pick(st.sampled_from(["", model]), clean_text),
        request_id=pick(st.just(""), st.one_of(clean_text, _long_text(300))),
    )
    kind = pick(st.sampled_from(["prompt", "chat", "prompt_token_ids"]), st.none())
    if kind == "prompt":
        req.prompt = pick(_short_text, st.one_of(clean_text, _long_text(2000)))
    elif kind == "chat":
        for _ in range(pick(st.integers(1, 2), st.integers(0, 5))):
            req.chat.messages.add(
                role=pick(st.just("user"), clean_text), content=pick(_short_text, clean_text)
            )
    elif kind == "prompt_token_ids":
        ids = pick(
            st.lists(st.integers(0, vocab_size - 1), min_size=1, max_size=16),
            st.lists(int32, max_size=16),
        )
        req.prompt_token_ids.ids.extend(ids)
    p = req.params
    p.max_tokens = pick(small_max_tokens, int32)
    for name, good, bad in [
        ("temperature", st.floats(0, 2), double),
        ("top_p", st.floats(0.01, 1), double),
        ("top_k", st.integers(-1, 2**31 - 1), int32),
        ("min_p", st.floats(0, 1), double),
        ("seed", st.integers(*INT64), int64),
    ]:
        value = pick(st.one_of(st.none(), good), bad)
        if value is not None:
            setattr(p, name, value)
    p.stop.extend(
        pick(
            st.lists(_short_text, max_size=16),
            st.lists(st.one_of(clean_text, _long_text(300)), max_size=20),
        )
    )
    p.stop_token_ids.extend(
        pick(st.lists(st.integers(0, vocab_size - 1), max_size=8), st.lists(int32, max_size=300))
    )
    p.ignore_eos, p.include_stop_str_in_output = draw(st.booleans()), draw(st.booleans())
    if draw(st.booleans()):
        p.skip_special_tokens = draw(st.booleans())
    return req


@st.composite
def grpc_payloads(draw, model: str, vocab_size: int) -> tuple[str, bytes]:
    """(method, serialized request): a drawn message, random bytes, or a message with some
    bytes overwritten (bad UTF-8 in strings, broken lengths)."""
    method = draw(st.sampled_from(["Generate"] * 8 + ["ListModels", "ClusterStatus"]))
    data = draw(generate_requests(model, vocab_size)).SerializeToString()
    how = draw(st.sampled_from(["message", "message", "bytes", "mutated"]))
    if how == "bytes":
        data = draw(st.binary(max_size=128))
    elif how == "mutated" and data:
        buf = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
        data = bytes(buf)
    return method, data


def call(
    channel: grpc.Channel,
    method: str,
    data: bytes,
    counts: Counter,
    metadata=(),
    expect_ok: bool = False,
) -> list:
    """Call `method` with raw bytes; OK with a complete answer, or INVALID_ARGUMENT with a
    message. Returns the decoded responses."""
    path = f"/tandem.v1.Tandem/{method}"
    try:
        if method == "Generate":
            rpc = channel.unary_stream(path, response_deserializer=pb.GenerateResponse.FromString)
            out = list(rpc(data, timeout=TIMEOUT_S, metadata=metadata))
            assert out and out[-1].finish_reason in (pb.STOP, pb.LENGTH), out[-1:]
        else:
            out = [channel.unary_unary(path)(data, timeout=TIMEOUT_S, metadata=metadata)]
    except grpc.RpcError as e:
        counts[f"gRPC {method} {e.code().name}"] += 1
        assert e.code() in GRPC_OK and not expect_ok, (e.code(), e.details(), data[:300])
        assert e.details(), e.code()
        return []
    counts[f"gRPC {method} OK"] += 1
    return out


def run_fuzz(strategy, check, num_examples: int, derandomize: bool = False) -> None:
    """`check(example)` on `num_examples` drawn examples (hypothesis shrinks a failure)."""

    @settings(
        max_examples=num_examples,
        deadline=None,
        database=None,
        derandomize=derandomize,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def fuzz(example):
        check(example)

    fuzz()


def summary(counts: Counter) -> str:
    """Counts by endpoint and status, one line each, and the total."""
    lines = [f"{n:6d}  {key}" for key, n in sorted(counts.items())]
    return "\n".join(lines + [f"{sum(counts.values()):6d}  inputs in all"])
