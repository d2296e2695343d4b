"""Logprobs, echo, n and best_of through the official `openai` client, on ONE disaggregated
tiny cluster (1 prefill + 1 decode worker): values equal the engine's own and transformers'
float32 log-softmax; seeded choices are reproducible and distinct."""

from __future__ import annotations

import openai
import pytest
import torch
from cluster_helpers import NUM_BLOCKS

from runtime.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from runtime.engine import Engine, SamplingParams

PROMPT = "The quick brown fox"
MAX_TOKENS = 6
TOL = 1e-4
EXTRA = {"ignore_eos": True}


@pytest.fixture(scope="module")
def oai(disaggregated_server):
    return openai.OpenAI(
        base_url=f"{disaggregated_server.http_url}/v1", api_key="unused", max_retries=0
    )


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return str(tiny_model_dir)


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return Engine(
        EngineConfig(
            model=ModelConfig(path=str(tiny_model_dir), max_model_len=512),
            cache=CacheConfig(block_size=4, num_blocks=NUM_BLOCKS),
            scheduler=SchedulerConfig(max_num_batched_tokens=64),
            num_threads=1,
        )
    )


@pytest.fixture(scope="module")
def hf_log_softmax(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)

    def rows(ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return hf(torch.tensor([ids])).logits[0].float().log_softmax(-1)

    return rows


def test_completion_logprobs_equal_the_engine_and_transformers(oai, model, engine, hf_log_softmax):
    params = dict(model=model, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0.8, seed=5)
    full = oai.completions.create(**params, logprobs=3, extra_body=EXTRA)
    lp = full.choices[0].logprobs
    want = engine.generate(
        PROMPT,
        SamplingParams(temperature=0.8, seed=5, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=3),
    )[0]
    tok = engine.tokenizer
    assert lp.tokens == [tok.decode([t]) for t in want.token_ids]
    assert lp.token_logprobs == pytest.approx(want.logprobs, abs=1e-6)
    for top, ref in zip(lp.top_logprobs, want.top_logprobs):
        assert {tok.decode([t]): v for t, v in ref}.items() <= top.items()
    text = full.choices[0].text
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(MAX_TOKENS)]
    assert "".join(lp.tokens).strip("\ufffd") == text.strip("\ufffd")
    prompt_ids = tok.encode(PROMPT)
    rows = hf_log_softmax(prompt_ids + want.token_ids)
    ref = [rows[len(prompt_ids) - 1 + j, t].item() for j, t in enumerate(want.token_ids)]
    assert lp.token_logprobs == pytest.approx(ref, abs=TOL)

    parts = list(oai.completions.create(**params, logprobs=3, stream=True, extra_body=EXTRA))
    streamed = [
        x for p in parts for x in (p.choices[0].logprobs.token_logprobs if p.choices else [])
    ]
    # The stream's prompt hits the prefix cache: the sums differ in the last bits.
    assert streamed == pytest.approx(lp.token_logprobs, abs=1e-5)
    assert [x for p in parts for x in p.choices[0].logprobs.text_offset] == lp.text_offset


def test_echo_returns_the_prompt_and_its_logprobs(oai, model, engine, hf_log_softmax):
    full = oai.completions.create(
        model=model,
        prompt=PROMPT,
        max_tokens=2,
        temperature=0,
        echo=True,
        logprobs=2,
        extra_body=EXTRA,
    )
    choice = full.choices[0]
    prompt_ids = engine.tokenizer.encode(PROMPT)
    assert choice.text.startswith(PROMPT)
    lp = choice.logprobs
    assert len(lp.tokens) == len(prompt_ids) + 2
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    rows = hf_log_softmax(prompt_ids)
    ref = [rows[j - 1, prompt_ids[j]].item() for j in range(1, len(prompt_ids))]
    assert lp.token_logprobs[1 : len(prompt_ids)] == pytest.approx(ref, abs=TOL)
    plain = oai.completions.create(
        model=model, prompt=PROMPT, max_tokens=2, temperature=0, echo=True, extra_body=EXTRA
    )
    assert plain.choices[0].text == choice.text and plain.choices[0].logprobs is None


def test_chat_logprobs_whole_and_streamed(oai, model, engine):
    params = dict(
        model=model,
        messages=[{"role": "user", "content": "Hello world!"}],
        max_tokens=MAX_TOKENS,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        extra_body=EXTRA,
    )
    chat = oai.chat.completions.create(**params)
    content = chat.choices[0].logprobs.content
    assert len(content) == MAX_TOKENS
    # A token ending inside a UTF-8 character reads as U+FFFD on its own (the random model
    # picks such byte tokens); the text holds the whole characters.
    assert "".join(c.token for c in content).strip("\ufffd") == chat.choices[
        0
    ].message.content.strip("\ufffd")
    for c in content:
        assert len(c.top_logprobs) == 2 and c.top_logprobs[0].token == c.token  # greedy
        assert c.logprob == c.top_logprobs[0].logprob
        assert c.bytes == list(c.token.encode())
    chunks = list(oai.chat.completions.create(**params, stream=True))
    streamed = [
        c
        for ch in chunks
        if ch.choices and ch.choices[0].logprobs
        for c in ch.choices[0].logprobs.content
    ]
    assert [(c.token, c.logprob) for c in streamed] == [(c.token, c.logprob) for c in content]
    no_logprobs = oai.chat.completions.create(**{**params, "logprobs": False, "top_logprobs": None})
    assert no_logprobs.choices[0].logprobs is None


def test_n_seeded_choices_are_reproducible_and_distinct(oai, model):
    params = dict(model=model, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=1.0, seed=7, n=3)
    a = oai.completions.create(**params, extra_body=EXTRA)
    b = oai.completions.create(**params, extra_body=EXTRA)
    texts = [c.text for c in sorted(a.choices, key=lambda c: c.index)]
    assert [c.index for c in sorted(a.choices, key=lambda c: c.index)] == [0, 1, 2]
    assert texts == [c.text for c in sorted(b.choices, key=lambda c: c.index)]
    assert len(set(texts)) == 3
    assert a.usage.completion_tokens == 3 * MAX_TOKENS
    single = oai.completions.create(**{**params, "n": 1}, extra_body=EXTRA)
    assert single.choices[0].text == texts[0]  # choice 0 is the request itself
    parts = list(oai.completions.create(**params, stream=True, extra_body=EXTRA))
    streamed = [
        "".join(p.choices[0].text for p in parts if p.choices[0].index == i) for i in range(3)
    ]
    assert streamed == texts


def test_best_of_returns_the_highest_cumulative_logprob(oai, model):
    params = dict(model=model, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=1.0, seed=3)
    runs = oai.completions.create(**params, n=4, logprobs=0, extra_body=EXTRA).choices
    best = max(runs, key=lambda c: sum(c.logprobs.token_logprobs))
    picked = oai.completions.create(**params, n=1, best_of=4, extra_body=EXTRA).choices
    assert [c.text for c in picked] == [best.text] and picked[0].logprobs is None
    with pytest.raises(openai.BadRequestError, match="best_of > n cannot be streamed"):
        oai.completions.create(**params, best_of=2, stream=True)
    with pytest.raises(openai.BadRequestError, match=r"best_of must be an int in \[n=3"):
        oai.completions.create(**params, n=3, best_of=2)
    with pytest.raises(openai.BadRequestError, match=r"n must be an int in \[1, 16\]"):
        oai.completions.create(**params, n=17)
    with pytest.raises(openai.BadRequestError, match=r"logprobs must be an int in \[0, 20\]"):
        oai.completions.create(**params, logprobs=21)
    with pytest.raises(openai.BadRequestError, match="top_logprobs needs logprobs"):
        oai.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2, top_logprobs=2
        )
