"""A KVHandle's request state on the wire (prompt, first token, sampling params, logprobs)."""

from __future__ import annotations

from runtime.engine import KVHandle, SamplingParams
from runtime.engine.grammar import GrammarSpec
from runtime.kv_transfer._proto import kv_transfer_pb2 as pb


def params_to_proto(p: SamplingParams) -> pb.SamplingParams:
    msg = pb.SamplingParams(
        max_tokens=p.max_tokens,
        temperature=p.temperature,
        top_k=p.top_k,
        top_p=p.top_p,
        min_p=p.min_p,
        stop=list(p.stop),
        stop_token_ids=list(p.stop_token_ids),
        ignore_eos=p.ignore_eos,
        include_stop_str_in_output=p.include_stop_str_in_output,
        skip_special_tokens=p.skip_special_tokens,
        presence_penalty=p.presence_penalty,
        frequency_penalty=p.frequency_penalty,
        repetition_penalty=p.repetition_penalty,
        logit_bias=dict(p.logit_bias),
        output_counts=pb.OutputCounts(
            min_tokens=p.min_tokens, num_prior_output_tokens=p.num_prior_output_tokens
        ),
    )
    if p.seed is not None:
        msg.seed = p.seed
    if p.logprobs is not None:
        msg.logprobs = p.logprobs
    if p.grammar is not None:
        msg.grammar_kind = p.grammar.kind
        msg.grammar = p.grammar.spec
    if p.prompt_logprobs is not None:
        msg.prompt_logprobs = p.prompt_logprobs
    return msg


def params_from_proto(m: pb.SamplingParams) -> SamplingParams:
    """ValueError (from SamplingParams' own validation) on out-of-range values."""
    return SamplingParams(
        max_tokens=m.max_tokens,
        temperature=m.temperature,
        top_k=m.top_k,
        top_p=m.top_p,
        min_p=m.min_p,
        seed=m.seed if m.HasField("seed") else None,
        stop=tuple(m.stop),
        stop_token_ids=tuple(m.stop_token_ids),
        ignore_eos=m.ignore_eos,
        logprobs=m.logprobs if m.HasField("logprobs") else None,
        prompt_logprobs=m.prompt_logprobs if m.HasField("prompt_logprobs") else None,
        include_stop_str_in_output=m.include_stop_str_in_output,
        skip_special_tokens=m.skip_special_tokens,
        presence_penalty=m.presence_penalty,
        frequency_penalty=m.frequency_penalty,
        repetition_penalty=m.repetition_penalty if m.HasField("repetition_penalty") else 1.0,
        logit_bias=tuple(sorted(m.logit_bias.items())),
        min_tokens=m.output_counts.min_tokens,
        num_prior_output_tokens=m.output_counts.num_prior_output_tokens,
        grammar=(GrammarSpec(m.grammar_kind, m.grammar) if m.grammar_kind else None),
    )


def state_to_proto(h: KVHandle) -> pb.RequestState:
    msg = pb.RequestState(
        prompt_token_ids=h.prompt_token_ids,
        output_token_ids=h.output_token_ids,
        params=params_to_proto(h.params),
    )
    for i in range(len(h.logprobs)):
        lp = pb.TokenLogprobs()
        if h.logprobs[i] is not None:
            lp.logprob = h.logprobs[i]
        top = h.top_logprobs[i] if i < len(h.top_logprobs) else None
        if top is not None:
            lp.has_top = True
            lp.top.extend(pb.TopLogprob(token_id=t, logprob=v) for t, v in top)
        msg.logprobs.append(lp)
    return msg


def handle_from_proto(request_id: str, m: pb.RequestState) -> KVHandle:
    logprobs = tuple(lp.logprob if lp.HasField("logprob") else None for lp in m.logprobs)
    top = tuple(
        [(t.token_id, t.logprob) for t in lp.top] if lp.has_top else None for lp in m.logprobs
    )
    return KVHandle(
        request_id,
        tuple(m.prompt_token_ids),
        tuple(m.output_token_ids),
        params_from_proto(m.params),
        len(m.prompt_token_ids),
        logprobs,
        top,
    )
