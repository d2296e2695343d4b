"""Structured output on the tiny random model: whatever the weights say, the grammar holds."""

import json
import re

import jsonschema
import pytest
import torch
from tiny_model import make_engine

from runtime.engine import SamplingParams
from runtime.engine.grammar import GrammarSpec

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "pet": {"enum": ["cat", "dog", "fox"]},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age", "pet", "ok"],
    "additionalProperties": False,
}
PROMPT = [5, 17, 42, 99, 3, 8, 250, 11, 64, 7]


def json_grammar(schema=SCHEMA, **kw) -> GrammarSpec:
    return GrammarSpec("json_schema", json.dumps(schema), **kw)


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return make_engine(tiny_model_dir, num_threads=1)


def test_json_schema_output_validates_for_many_seeds(engine):
    params = [
        SamplingParams(max_tokens=80, temperature=1.0, seed=s, grammar=json_grammar())
        for s in range(12)
    ]
    outs = engine.generate(prompt_token_ids=[PROMPT] * len(params), params=params)
    texts = {o.text for o in outs}
    assert len(texts) > 3  # sampling still samples, inside the grammar
    for out in outs:
        assert out.finish_reason == "stop", out.text
        jsonschema.validate(json.loads(out.text), SCHEMA)


def test_json_object_regex_and_choice(engine):
    obj, rx, choice = engine.generate(
        prompt_token_ids=[PROMPT] * 3,
        params=[
            SamplingParams(max_tokens=60, temperature=0.7, seed=1, grammar=g)
            for g in (
                GrammarSpec("json_object"),
                GrammarSpec("regex", r"(quick|lazy) [0-9]{2,4}!"),
                GrammarSpec("choice", json.dumps(["brown fox", "lazy dog", 'say "hi"'])),
            )
        ],
    )
    # json_object may run to max_tokens on a random model; what it emitted is a JSON prefix
    # whose first character opens an object.
    assert obj.text.startswith("{")
    if obj.finish_reason == "stop":
        assert isinstance(json.loads(obj.text), dict)
    assert re.fullmatch(r"(quick|lazy) [0-9]{2,4}!", rx.text), rx.text
    assert rx.finish_reason == "stop"
    assert choice.text in ("brown fox", "lazy dog", 'say "hi"')
    assert choice.finish_reason == "stop"


def test_grammar_survives_the_kv_handoff(tiny_model_dir, engine):
    params = SamplingParams(max_tokens=80, temperature=0.9, seed=7, grammar=json_grammar())
    want = engine.generate(prompt_token_ids=[PROMPT], params=params)[0]
    prefill = make_engine(tiny_model_dir, role="prefill", num_threads=1)
    out = prefill.generate(prompt_token_ids=[PROMPT], params=params)[0]
    decode = make_engine(tiny_model_dir, role="decode", num_threads=1)
    decode.import_kv(out.kv_handle, prefill.export_kv(out.request_id))
    got = None
    while decode.has_unfinished_requests():
        got = next((o for o in decode.step() if o.finished), got)
    assert got is not None and got.token_ids == want.token_ids
    jsonschema.validate(json.loads(got.text), SCHEMA)


def test_a_resumed_request_replays_the_tokens_already_sent(engine):
    greedy = SamplingParams(max_tokens=80, temperature=0, grammar=json_grammar())
    want = engine.generate(prompt_token_ids=[PROMPT], params=greedy)[0].token_ids
    k = 5  # the tokens an earlier try sent join the prompt; the matcher consumes them first
    resumed = SamplingParams(max_tokens=80, temperature=0, grammar=json_grammar()).resumed(k)
    rest = engine.generate(prompt_token_ids=[PROMPT + want[:k]], params=resumed)[0]
    assert want[:k] + rest.token_ids == want


def test_the_grammar_wins_over_max_tokens_only_by_stopping_early(engine):
    # A complete grammar ends the request as "stop" without waiting for an EOS token.
    out = engine.generate(
        prompt_token_ids=[PROMPT],
        params=[SamplingParams(max_tokens=50, temperature=0, grammar=GrammarSpec("regex", "ab"))],
    )[0]
    assert (out.text, out.finish_reason) == ("ab", "stop")


def test_the_grammar_wins_over_min_tokens(engine):
    # min_tokens holds EOS back, but a complete grammar still ends the request.
    params = SamplingParams(
        max_tokens=50, min_tokens=20, temperature=0, grammar=GrammarSpec("regex", "ab")
    )
    out = engine.generate(prompt_token_ids=[PROMPT], params=[params])[0]
    assert (out.text, out.finish_reason) == ("ab", "stop")


def test_a_row_the_penalties_leave_nothing_takes_the_grammar_mask_of_the_raw_logits():
    from runtime.engine.structured_output import apply_grammar

    class OnlyEos:  # a grammar whose one allowed token is EOS (id 2)
        def allowed(self):
            return torch.arange(8) == 2

    raw = torch.randn(2, 8)
    processed = raw.clone()
    processed[:, 2] = float("-inf")  # min_tokens held EOS back in both rows
    got = apply_grammar(processed, [OnlyEos(), None], fallback=raw)
    assert got[0].argmax().item() == 2 and got[0, 2] == raw[0, 2]
    assert torch.isneginf(got[0]).sum() == 7
    assert torch.equal(got[1], processed[1])  # a row without a grammar is left alone


@pytest.mark.parametrize(
    ("kind", "spec", "says"),
    [
        ("json_schema", "{not json", "not valid JSON"),
        ("json_schema", '{"type": "bogus"}', "bogus"),
        ("json_schema", "[1]", "JSON object"),
        ("regex", "[a-z", "unclosed character class"),
        ("regex", "", "empty"),
        ("choice", "[]", "non-empty list"),
        ("choice", '["a", 3]', "non-empty list"),
        ("lark", "start: 'a'", "grammar kind"),
    ],
)
def test_invalid_grammars_say_what_is_wrong(kind, spec, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        GrammarSpec(kind, spec)


def test_logprobs_stay_those_of_the_raw_logits(engine):
    from runtime.engine.sampler import Sampler

    m = engine.structured_output.matcher(GrammarSpec("regex", "[0-9]+"), PROMPT, [])
    logits = torch.randn(1, engine.runner.geometry.vocab_size)
    p = SamplingParams(temperature=0, logprobs=1)
    got = Sampler()(logits, [p], [0], matchers=[m])
    allowed = m.allowed()
    assert allowed[got.token_ids[0]]
    assert got.token_ids[0] == logits[0].masked_fill(~allowed, float("-inf")).argmax().item()
    assert got.logprobs[0] == pytest.approx(logits.log_softmax(-1)[0, got.token_ids[0]].item())
