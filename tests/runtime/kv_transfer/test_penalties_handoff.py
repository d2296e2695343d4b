"""The KV handoff's request state carries penalties, logit_bias and min_tokens, so the decode
side continues a request exactly as a colocated engine would."""

from tiny_model import make_engine

from runtime.engine import SamplingParams
from runtime.kv_transfer._proto import kv_transfer_pb2 as pb
from runtime.kv_transfer.handles import handle_from_proto, params_from_proto, state_to_proto

PROMPT = [5, 17, 42, 99, 3, 8, 250, 11, 64, 7, 17, 42, 99]
N = 10


def test_unset_penalty_fields_read_as_off():
    # What an older sender, without these fields, puts on the wire.
    old = pb.SamplingParams(max_tokens=4, temperature=1.0, top_p=1.0, skip_special_tokens=True)
    p = params_from_proto(old)
    assert not p.has_penalties and p.repetition_penalty == 1.0


def test_prefill_decode_split_carries_penalties_over_the_wire(tiny_model_dir):
    params = SamplingParams(
        temperature=0.0,
        max_tokens=N,
        repetition_penalty=1.3,
        presence_penalty=0.7,
        frequency_penalty=0.4,
        logit_bias={7: 2.5, 99: -1.0},
        min_tokens=N,
        num_prior_output_tokens=2,
    )
    prefill = make_engine(tiny_model_dir, role="prefill", num_threads=1)
    decode = make_engine(tiny_model_dir, role="decode", num_threads=1)
    colocated = make_engine(tiny_model_dir, num_threads=1)
    handle = prefill.generate(prompt_token_ids=[PROMPT], params=params)[0].kv_handle
    wire = state_to_proto(handle).SerializeToString()
    received = handle_from_proto(handle.request_id, pb.RequestState.FromString(wire))
    assert received.params == params
    rid = decode.import_kv(received, prefill.export_kv(handle.request_id))
    outs = {}
    while decode.has_unfinished_requests():
        for o in decode.step():
            outs[o.request_id] = o
    expected = colocated.generate(prompt_token_ids=[PROMPT], params=params)[0].token_ids
    assert outs[rid].token_ids == expected
