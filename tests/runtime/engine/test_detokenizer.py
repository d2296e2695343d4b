from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from runtime.engine.detokenizer import IncrementalDetokenizer, find_stop_string

SMOLLM2_DIR = Path.home() / ".cache/tandem/models/SmolLM2-135M-Instruct"
CORPUS = [
    "the quick brown fox jumps over the lazy dog.",
    "a café au lait, déjà vu, and a naïve résumé.",
    "hello world, hello there, say hello to the world.",
] * 10


def local_byte_level_bpe():
    """A GPT-2 style byte-level BPE trained on CORPUS: emoji and CJK split into byte tokens."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|endoftext|>", clean_up_tokenization_spaces=False
    )


@pytest.fixture(
    scope="module",
    params=[
        "local-bpe",
        pytest.param(
            "smollm2",
            marks=[
                pytest.mark.model,
                pytest.mark.skipif(
                    not (SMOLLM2_DIR / "tokenizer.json").exists(), reason="SmolLM2 not fetched"
                ),
            ],
        ),
    ],
)
def tokenizer(request):
    if request.param == "smollm2":
        return AutoTokenizer.from_pretrained(SMOLLM2_DIR)
    return local_byte_level_bpe()


def stream(tokenizer, prompt, output_ids, skip_special_tokens=True):
    detok = IncrementalDetokenizer(tokenizer, tokenizer.encode(prompt), skip_special_tokens)
    deltas = [detok.add_token(t) for t in output_ids]
    assert "".join(deltas) == detok.text
    return deltas


TEXTS = [
    "hello world, the fox jumps.",
    "Crème brûlée à la façon de Zoë — naïve? ¡Sí!",
    "你好，世界。東京は晴れです。한국어 텍스트",
    "party 🎉🎉 thumbs 👍🏽 family 👨‍👩‍👧 flag 🇯🇵 done",
    "mixed: café 🎉 你好 x² ∑ → ok\n\tnew line",
]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("prompt", ["", "Say something:", "日本語のプロンプト 🎉"])
def test_deltas_concatenate_to_full_decode(tokenizer, prompt, text):
    output_ids = tokenizer.encode(text)
    deltas = stream(tokenizer, prompt, output_ids)
    assert "".join(deltas) == tokenizer.decode(output_ids, skip_special_tokens=True)
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)


def test_incomplete_multibyte_char_is_held_back():
    tokenizer = local_byte_level_bpe()
    output_ids = tokenizer.encode("ok 🎉")
    # The emoji's four bytes are four tokens in this vocabulary: three deltas stay empty.
    assert tokenizer.convert_ids_to_tokens(output_ids) == ["o", "k", "Ġ", "ð", "Ł", "İ", "ī"]
    assert stream(tokenizer, "", output_ids) == ["o", "k", " ", "", "", "", "🎉"]


def test_special_tokens_skipped_or_kept(tokenizer):
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    output_ids = tokenizer.encode("hello") + [eos] + tokenizer.encode(" world")
    skipped = "".join(stream(tokenizer, "hi", output_ids, skip_special_tokens=True))
    kept = "".join(stream(tokenizer, "hi", output_ids, skip_special_tokens=False))
    assert skipped == tokenizer.decode(output_ids, skip_special_tokens=True) == "hello world"
    assert kept == tokenizer.decode(output_ids, skip_special_tokens=False)
    assert kept == "hello<|im_end|> world"


def test_out_of_vocabulary_id_adds_nothing(tokenizer):
    output_ids = tokenizer.encode("hello") + [len(tokenizer) + 10] + tokenizer.encode(" world")
    assert "".join(stream(tokenizer, "", output_ids)) == "hello world"


def stream_until_stop(tokenizer, text, stop, include):
    """Feed `text`'s tokens one by one, checking stops after each delta as the engine will."""
    detok = IncrementalDetokenizer(tokenizer, tokenizer.encode("Q:"))
    for num_tokens, token_id in enumerate(tokenizer.encode(text), start=1):
        delta = detok.add_token(token_id)
        cut = find_stop_string(detok.text, len(delta), stop, include)
        if cut is not None:
            return detok.text[:cut], num_tokens
    return detok.text, None


def test_stop_string_spanning_tokens(tokenizer):
    text = "the fox said STOP now and more"
    ids = tokenizer.encode(text)
    assert not any("STOP" in t for t in tokenizer.convert_ids_to_tokens(ids))  # spans tokens
    cut, num_tokens = stream_until_stop(tokenizer, text, ("STOP",), include=False)
    assert cut == "the fox said "
    assert num_tokens < len(ids)
    cut, _ = stream_until_stop(tokenizer, text, ("xyz", "STOP"), include=True)
    assert cut == "the fox said STOP"


def test_multibyte_stop_string(tokenizer):
    cut, num_tokens = stream_until_stop(tokenizer, "ok 你好世界 then 🎉 end", ("🎉",), False)
    assert cut == "ok 你好世界 then "
    cut, _ = stream_until_stop(tokenizer, "ok 你好世界 then 🎉 end", ("好世",), True)
    assert cut == "ok 你好世"


def test_find_stop_string_only_in_new_chars():
    assert find_stop_string("abc STOP def", 4, ("STOP",), False) is None  # seen before
    assert find_stop_string("abc STOP def", 0, ("STOP",), False) is None
    assert find_stop_string("abc STOP", 4, (), False) is None
    assert find_stop_string("abc STOP", 1, ("STOP",), False) == 4  # spans old and new
    assert find_stop_string("abc STOP", 1, ("STOP",), True) == 8 == len("abc STOP")
    assert find_stop_string("abc STOP def", 6, ("STOP",), True) == 8
    assert find_stop_string("ST", 2, ("STOP",), False) is None
    assert find_stop_string("STOP", 100, ("STOP",), False) == 0


def test_find_stop_string_earliest_end_wins():
    text = "x abcd y"
    assert find_stop_string(text, len(text), ("abcd", "bc"), False) == 3
    assert find_stop_string(text, len(text), ("abcd", "bc"), True) == 5
    assert find_stop_string(text, len(text), ("y", "cd"), True) == 6
    # Same end: the earlier entry of `stop` wins.
    assert find_stop_string(text, len(text), ("cd", "abcd"), False) == 4
    assert find_stop_string(text, len(text), ("abcd", "cd"), False) == 2
    # Of two occurrences in the new text, the first counts.
    assert find_stop_string("a.b.c", 4, (".",), False) == 1
