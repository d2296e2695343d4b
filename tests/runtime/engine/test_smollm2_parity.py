"""Token-exact greedy parity with transformers on the real SmolLM2-135M, in float32."""

import pytest
import torch

from runtime.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from runtime.engine import Engine, SamplingParams

pytestmark = pytest.mark.model

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers greater than 100.",
    "Explain in one sentence why the sky is blue.",
    "def fibonacci(n):",
    "Translate 'good morning' into Spanish, French and German.",
    "Once upon a time, in a small village at the edge of a great forest, there lived an old "
    "clockmaker who had never left his workshop. One winter morning a stranger knocked",
    "Q: How many legs does a spider have?\nA:",
    "The following is a detailed technical explanation of how a paged key-value cache works in a "
    "large language model serving system, covering block tables, reference counting, prefix "
    "sharing between requests, copy-on-write, eviction policies and the interaction with "
    "continuous batching and chunked prefill. First,",
]
MAX_NEW = 24


@pytest.fixture(scope="module")
def prompt_ids(default_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(default_model_dir))
    chats = [
        tok.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in PROMPTS[:4]
    ]
    return [tok.encode(t) for t in chats + PROMPTS[4:]]


@pytest.fixture(scope="module")
def reference(default_model_dir, prompt_ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(default_model_dir), dtype=torch.float32)
    refs = []
    with torch.inference_mode():
        for ids in prompt_ids:
            out = model.generate(
                torch.tensor([ids]),
                max_new_tokens=MAX_NEW,
                do_sample=False,
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            )
            refs.append(out[0, len(ids) :].tolist())
    return refs


def make_engine(path, **sched):
    return Engine(
        EngineConfig(
            model=ModelConfig(path=str(path), dtype="float32"),
            cache=CacheConfig(block_size=16, memory_gib=0.25),
            scheduler=SchedulerConfig(**sched),
        )
    )


PARAMS = SamplingParams(temperature=0.0, max_tokens=MAX_NEW)


def test_batched_greedy_equals_transformers(default_model_dir, prompt_ids, reference):
    eng = make_engine(default_model_dir)
    outs = eng.generate(prompt_token_ids=prompt_ids, params=PARAMS)
    assert [o.token_ids for o in outs] == reference
    assert "Paris" in outs[0].text


def test_staggered_chunked_arrivals_equal_transformers(default_model_dir, prompt_ids, reference):
    eng = make_engine(default_model_dir, max_num_batched_tokens=32)
    pending = list(enumerate(prompt_ids))
    index, results = {}, {}
    while pending or eng.has_unfinished_requests():
        if pending:  # a new request joins every step while others decode
            i, ids = pending.pop(0)
            index[eng.add_request(params=PARAMS, prompt_token_ids=ids)] = i
        for out in eng.step():
            if out.finished:
                results[index[out.request_id]] = out.token_ids
    assert [results[i] for i in range(len(prompt_ids))] == reference
