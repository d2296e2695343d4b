"""A request resumed after a worker death keeps its penalties' view of what it generated."""

from runtime.engine import SamplingParams
from runtime.frontend.dispatch import Dispatcher, _Attempt
from runtime.frontend.requests import PreparedRequest


def test_continuation_counts_sent_tokens_for_penalties_and_min_tokens():
    params = SamplingParams(max_tokens=8, min_tokens=6, presence_penalty=1.0)
    a = _Attempt(PreparedRequest("r", (1, 2, 3), params), "r-key")
    assert Dispatcher._continuation(a, 0).params == params
    a.token_ids = [9, 9, 4]
    sub = Dispatcher._continuation(a, 1)
    assert sub.prompt_token_ids == (1, 2, 3, 9, 9, 4) and sub.request_id == "r-key~1"
    assert (sub.params.max_tokens, sub.params.min_tokens) == (5, 3)
    assert sub.params.num_prior_output_tokens == 3 and sub.params.presence_penalty == 1.0
