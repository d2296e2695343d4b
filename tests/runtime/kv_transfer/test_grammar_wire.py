"""A request's grammar crosses the KV handoff and a recovery's continuation intact."""

import json

from runtime.engine import SamplingParams
from runtime.engine.grammar import GrammarSpec
from runtime.frontend.dispatch import Dispatcher, _Attempt
from runtime.frontend.requests import PreparedRequest
from runtime.kv_transfer._proto import kv_transfer_pb2 as pb
from runtime.kv_transfer.handles import params_from_proto, params_to_proto

SCHEMA = json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}})


def test_grammar_round_trips_the_wire():
    for grammar in (
        None,
        GrammarSpec("json_schema", SCHEMA),
        GrammarSpec("json_object"),
        GrammarSpec("regex", "[0-9]+"),
        GrammarSpec("choice", '["yes", "no"]'),
    ):
        p = SamplingParams(max_tokens=9, temperature=0, grammar=grammar).resumed(3)
        wire = params_to_proto(p).SerializeToString()
        assert params_from_proto(pb.SamplingParams.FromString(wire)) == p


def test_a_continuation_replays_every_token_already_sent():
    params = SamplingParams(max_tokens=20, grammar=GrammarSpec("json_schema", SCHEMA))
    attempt = _Attempt(PreparedRequest("r", (1, 2, 3), params), "r")
    attempt.token_ids = [7, 8]
    first = Dispatcher._continuation(attempt, 1)
    assert first.prompt_token_ids == (1, 2, 3, 7, 8)
    assert first.params.max_tokens == 18
    # the matcher replays the prompt's last num_prior_output_tokens: the 2 tokens sent
    assert first.params.grammar == GrammarSpec("json_schema", SCHEMA)
    assert first.params.num_prior_output_tokens == 2
    plain = _Attempt(PreparedRequest("r", (1,), SamplingParams(max_tokens=5)), "r")
    plain.token_ids = [4]
    assert Dispatcher._continuation(plain, 1).params.grammar is None
