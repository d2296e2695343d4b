"""Penalties, logit_bias and min_tokens through the engine on the tiny model, against a
greedy loop over transformers' logits with each definition applied by hand."""

import pytest
import torch
from tiny_model import make_engine

from runtime.engine import SamplingParams

PROMPT = [5, 17, 42, 99, 3, 8, 250, 11, 64, 7, 17, 42, 99]
N = 10


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return make_engine(tiny_model_dir, num_threads=1)


def reference(model, prompt, n, *, rep=1.0, pres=0.0, freq=0.0, banned=(), num_banned=0):
    """Greedy tokens from the model's logits, each penalty applied as its definition says;
    `banned` ids are masked for the first `num_banned` outputs (min_tokens)."""
    ids = list(prompt)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids])).logits[0, -1].clone()
            for t in set(ids):
                logits[t] = logits[t] / rep if logits[t] > 0 else logits[t] * rep
            for t in set(out):
                logits[t] -= freq * out.count(t) + pres
            if len(out) < num_banned:
                logits[list(banned)] = float("-inf")
            out.append(int(logits.argmax()))
            ids.append(out[-1])
    return out


def greedy(engine, prompt=PROMPT, **fields):
    fields.setdefault("max_tokens", N)
    params = SamplingParams(temperature=0.0, ignore_eos=True, **fields)
    return engine.generate(prompt_token_ids=[prompt], params=params)[0]


def test_unpenalised_greedy_matches_the_reference(engine, hf_model):
    assert greedy(engine).token_ids == reference(hf_model, PROMPT, N)


def test_huge_logit_bias_on_one_token_repeats_it(engine):
    out = greedy(engine, logit_bias={123: 100.0})
    assert out.token_ids == [123] * N


def test_negative_logit_bias_removes_the_greedy_choice(engine, hf_model):
    first = reference(hf_model, PROMPT, 1)[0]
    out = greedy(engine, max_tokens=1, logit_bias={first: -100})
    assert out.token_ids == reference(hf_model, PROMPT, 1, banned=[first], num_banned=1)
    assert out.token_ids != [first]


def test_repetition_penalty_changes_greedy_output_as_computed(engine, hf_model):
    expected = reference(hf_model, PROMPT, N, rep=1.8)
    assert expected != reference(hf_model, PROMPT, N)  # it does change the output here
    assert greedy(engine, repetition_penalty=1.8).token_ids == expected


@pytest.mark.parametrize("pres, freq", [(1.5, 0.0), (0.0, 0.9), (-2.0, 0.0)])
def test_presence_and_frequency_penalties_as_computed(engine, hf_model, pres, freq):
    expected = reference(hf_model, PROMPT, N, pres=pres, freq=freq)
    assert expected != reference(hf_model, PROMPT, N)
    out = greedy(engine, presence_penalty=pres, frequency_penalty=freq)
    assert out.token_ids == expected


def test_min_tokens_delays_eos(engine, hf_model):
    eos = engine.tokenizer.eos_token_id
    bias = {eos: 100.0}  # EOS would otherwise end the request at once
    params = SamplingParams(temperature=0.0, max_tokens=N, logit_bias=bias)
    first = engine.generate(prompt_token_ids=[PROMPT], params=params)[0]
    assert (first.token_ids, first.finish_reason) == ([eos], "stop")
    params = SamplingParams(temperature=0.0, max_tokens=N, logit_bias=bias, min_tokens=3)
    out = engine.generate(prompt_token_ids=[PROMPT], params=params)[0]
    assert out.token_ids == reference(hf_model, PROMPT, 3, banned=[eos], num_banned=3) + [eos]
    assert out.finish_reason == "stop"


def test_min_tokens_holds_back_stop_token_ids(engine, hf_model):
    stop = reference(hf_model, PROMPT, 1)[0]
    out = greedy(engine, max_tokens=4, stop_token_ids=[stop], min_tokens=4)
    assert out.token_ids == reference(hf_model, PROMPT, 4, banned=[stop], num_banned=4)
    assert out.finish_reason == "length"


def test_a_batch_keeps_each_requests_penalties(engine, hf_model):
    prompts = [PROMPT, PROMPT[3:], PROMPT]
    params = [
        SamplingParams(temperature=0.0, max_tokens=N, ignore_eos=True, repetition_penalty=1.8),
        SamplingParams(temperature=0.0, max_tokens=N, ignore_eos=True),
        SamplingParams(temperature=0.0, max_tokens=N, ignore_eos=True, frequency_penalty=0.9),
    ]
    outs = engine.generate(prompt_token_ids=prompts, params=params)
    assert [o.token_ids for o in outs] == [
        reference(hf_model, PROMPT, N, rep=1.8),
        reference(hf_model, PROMPT[3:], N),
        reference(hf_model, PROMPT, N, freq=0.9),
    ]


def test_a_resumed_request_counts_its_prior_output(engine):
    # What the dispatcher sends after a worker died 4 tokens in: those tokens join the prompt,
    # and the penalties still see them as output.
    full = greedy(engine, frequency_penalty=0.9, presence_penalty=0.5).token_ids
    resumed = greedy(
        engine,
        prompt=PROMPT + full[:4],
        max_tokens=N - 4,
        frequency_penalty=0.9,
        presence_penalty=0.5,
        num_prior_output_tokens=4,
    )
    assert full[:4] + resumed.token_ids == full


def test_a_resumed_seeded_sample_goes_on_as_if_never_interrupted(engine):
    # A seeded, sampled request resumed 4 tokens in draws its 5th token with the 5th token's
    # noise, so the client sees the same text as from an uninterrupted run.
    params = SamplingParams(temperature=1.0, seed=7, max_tokens=N, ignore_eos=True)
    full = engine.generate(prompt_token_ids=[PROMPT], params=[params])[0].token_ids
    rest = engine.generate(prompt_token_ids=[PROMPT + full[:4]], params=[params.resumed(4)])[0]
    assert full[:4] + rest.token_ids == full


def test_out_of_vocabulary_bias_and_prior_output_are_refused(engine):
    vocab = engine.runner.geometry.vocab_size
    with pytest.raises(ValueError, match=rf"logit_bias token ids must be in \[0, {vocab}\)"):
        engine.add_request(params=SamplingParams(logit_bias={vocab: 1.0}), prompt_token_ids=[1, 2])
    with pytest.raises(ValueError, match="num_prior_output_tokens=3 exceeds"):
        engine.add_request(
            params=SamplingParams(num_prior_output_tokens=3), prompt_token_ids=[1, 2]
        )
    assert not engine.requests
