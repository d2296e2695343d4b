"""The `tandem` command line."""

from __future__ import annotations

import argparse
import os
import sys

from runtime.plan_cli import add_planner_parsers
from runtime.serve_cli import add_serve_parser, add_tls_arguments


def _cmd_model_fetch(args: argparse.Namespace) -> int:
    from runtime.model_store import ModelFetchError, fetch_default_model

    try:
        path = fetch_default_model(force=args.force)
    except ModelFetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    if args.url:
        from runtime.serve_cli import generate_remote

        return generate_remote(args)
    from runtime.config import CacheConfig, EngineConfig, ModelConfig
    from runtime.engine import Engine, SamplingParams
    from runtime.model_store import ModelFetchError, resolve_model

    try:
        params = SamplingParams(
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            seed=args.seed,
        )
        path = resolve_model(args.model)
        engine = Engine(
            EngineConfig(
                model=ModelConfig(path=str(path), dtype=args.dtype),
                cache=CacheConfig(memory_gib=0.5),
            )
        )
        prompt = args.prompt
        if args.chat:
            prompt = engine.apply_chat_template([{"role": "user", "content": prompt}])
        for out in engine.stream(prompt, params):
            sys.stdout.write(out.delta_text)
            sys.stdout.flush()
    except (ValueError, ModelFetchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write("\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tandem", description="Disaggregated LLM serving")
    sub = parser.add_subparsers(dest="command", required=True)

    model = sub.add_parser("model", help="manage the default model")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    fetch = model_sub.add_parser("fetch", help="download and convert SmolLM2-135M-Instruct once")
    fetch.add_argument("--force", action="store_true", help="convert again even if cached")
    fetch.set_defaults(func=_cmd_model_fetch)

    gen = sub.add_parser("generate", help="stream a completion to stdout")
    gen.add_argument("prompt")
    gen.add_argument(
        "--model",
        default=None,
        help="local Hugging Face model directory (default: SmolLM2-135M-Instruct)",
    )
    gen.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    gen.add_argument("--max-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--chat", action="store_true", help="apply the model's chat template")
    gen.add_argument(
        "--url",
        default=None,
        help="gRPC HOST:PORT of a running `tandem serve` (default: run in-process)",
    )
    gen.add_argument(
        "--api-key",
        default=os.environ.get("TANDEM_API_KEY"),
        help="with --url: the server's API key (default: $TANDEM_API_KEY)",
    )
    gen.add_argument("--timeout", type=float, default=120.0, help="with --url: the deadline (s)")
    gen.add_argument(
        "--timings", action="store_true", help="with --url: print the timing breakdown to stderr"
    )
    add_tls_arguments(gen)
    gen.set_defaults(func=_cmd_generate)
    add_serve_parser(sub)
    add_planner_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
