"""`tandem serve`, `tandem status` and `tandem generate --url`: the CLI over the cluster and SDK."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

DEMO_PROMPT = "What is the capital of France? Answer in one sentence."


def add_serve_parser(sub) -> None:
    serve = sub.add_parser("serve", help="start a cluster (prefill/decode pools) and serve it")
    serve.add_argument("--config", required=True, help="cluster YAML (see runtime/configs/)")
    serve.add_argument(
        "--address",
        default=None,
        help="join this Ray cluster ('auto' or ray://HOST:10001) instead of "
        "the config's ray.address (default: an embedded local Ray)",
    )
    serve.add_argument("--model", default=None, help="override model.path of the config")
    serve.add_argument(
        "--served-model-name",
        default=None,
        help="override model.served_name (the name requests must use)",
    )
    serve.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="override engine.dtype (every pool that does not set its own)",
    )
    serve.add_argument("--host", default=None, help="override server.host")
    serve.add_argument(
        "--port", type=int, default=None, help="override server.http_port (the OpenAI HTTP port)"
    )
    serve.add_argument("--grpc-port", type=int, default=None, help="override server.grpc_port")
    serve.add_argument(
        "--log-level",
        default=None,
        choices=["debug", "info", "warning", "error"],
        help="override observability.log_level (default info)",
    )
    serve.add_argument(
        "--log-format",
        default=None,
        choices=["text", "json"],
        help="override observability.log_format: json writes one object per line with "
        "timestamp, level, logger, message and request_id",
    )
    serve.add_argument(
        "--disable-access-log",
        action="store_true",
        help="no access-log line per HTTP/gRPC call (observability.access_log: false)",
    )
    serve.add_argument(
        "--otlp-traces-endpoint",
        default=None,
        help="override observability.otlp_traces_endpoint: export OpenTelemetry spans "
        "over OTLP/gRPC there (e.g. http://localhost:4317)",
    )
    serve.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved configuration (file, TANDEM_<SECTION>__<FIELD> "
        "variables and these flags; defaults filled in, secrets masked) "
        "and the engine config of each pool's workers, then exit",
    )
    serve.add_argument(
        "--demo",
        action="store_true",
        help="once healthy, send one request through the SDK and print it",
    )
    serve.set_defaults(func=cmd_serve)

    status = sub.add_parser("status", help="health and load of a running cluster")
    status.add_argument("--url", default="127.0.0.1:50051", help="the frontend's gRPC HOST:PORT")
    status.add_argument("--api-key", default=os.environ.get("TANDEM_API_KEY"))
    add_tls_arguments(status)
    status.set_defaults(func=cmd_status)


def add_tls_arguments(parser) -> None:
    """--ca-file / --server-name of the SDK's TLS (a grpcs:// URL turns TLS on too)."""
    parser.add_argument(
        "--ca-file",
        default=None,
        help="PEM roots to trust for the server's TLS certificate (implies TLS; "
        "a grpcs:// URL uses TLS with the system's roots)",
    )
    parser.add_argument(
        "--server-name", default=None, help="the name to check the server's certificate against"
    )


def flag_overrides(args: argparse.Namespace) -> dict:
    """The `serve` flags that were given, in the cluster file's shape."""
    flags = {
        "model": {"path": args.model, "served_name": args.served_model_name},
        "engine": {"dtype": args.dtype},
        "server": {"host": args.host, "http_port": args.port, "grpc_port": args.grpc_port},
        "ray": {"address": args.address},
        "observability": {
            "log_level": args.log_level,
            "log_format": args.log_format,
            "access_log": False if args.disable_access_log else None,
            "otlp_traces_endpoint": args.otlp_traces_endpoint,
        },
    }
    return {
        section: given
        for section, values in flags.items()
        if (given := {k: v for k, v in values.items() if v is not None})
    }


def cmd_serve(args: argparse.Namespace) -> int:
    import yaml

    from runtime.cluster import ConfigError, load_cluster_config
    from runtime.cluster.launch import serve_until_signalled
    from runtime.cluster.overrides import resolved_view
    from runtime.model_store import DEFAULT_MODEL_NAME
    from runtime.observability import ObservabilityConfig, configure_logging

    # The flags' logging until the file is read; then the resolved section's.
    configure_logging(
        ObservabilityConfig(
            log_level=args.log_level or "info", log_format=args.log_format or "text"
        )
    )
    try:
        # Reviewing a deployment must not fetch or open its model: the path stays as given.
        config = load_cluster_config(
            args.config,
            overrides=flag_overrides(args),
            resolve_model=(lambda path: path or DEFAULT_MODEL_NAME) if args.print_config else None,
        )
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(resolved_view(config), sort_keys=False), end="")
        return 0
    configure_logging(config.observability)

    async def ready(frontend) -> None:
        grpc_url, http_url = frontend.grpc_url, frontend.http_url
        print(
            f"tandem: serving {config.model_name!r} ({config.mode}: "
            + ", ".join(f"{p.replicas} {p.role}" for p in config.pools if p.replicas)
            + f") on gRPC {grpc_url} and HTTP {http_url}",
            flush=True,
        )
        if args.demo:
            tls = config.server.tls
            await demo(
                grpc_url,
                config.api_key,
                ca_file=(tls.ca_file or tls.cert_file) if tls is not None else None,
                server_name=tls.server_name if tls is not None else None,
            )
        print(usage_text(grpc_url, http_url, config.model_name), flush=True)

    try:
        asyncio.run(serve_until_signalled(config, ready))
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("tandem: stopped", flush=True)
    return 0


async def demo(
    url: str, api_key: str | None, ca_file: str | None = None, server_name: str | None = None
) -> None:
    """One real request through the SDK, streamed, with its timing breakdown."""
    from runtime.client import AsyncClient, StreamChunk

    print(f"\n>>> {DEMO_PROMPT}\n", flush=True)
    async with AsyncClient(
        url, api_key=api_key, ca_file=ca_file, server_name=server_name
    ) as client:
        last: StreamChunk | None = None
        async for chunk in client.stream(
            messages=[{"role": "user", "content": DEMO_PROMPT}], max_tokens=64, temperature=0.0
        ):
            print(chunk.text, end="", flush=True)
            last = chunk
    if last is None or last.usage is None or last.timings is None:
        # The server's last message carries usage and timings; a stream cut short has none.
        print("\n\n[the stream ended without its final message]\n", flush=True)
        return
    print(
        f"\n\n[{last.finish_reason}; {last.usage.prompt_tokens} prompt + "
        f"{last.usage.completion_tokens} generated tokens; "
        f"{last.timings.prefill_worker} -> {last.timings.decode_worker}]",
        flush=True,
    )
    print(f"[{last.timings.describe()}]\n", flush=True)


def usage_text(grpc_url: str, http_url: str, model: str) -> str:
    return f"""Query it (Ctrl-C stops the cluster):
  SDK:     python -c "from runtime.client import Client; print(Client('{grpc_url}').chat([{{'role': 'user', 'content': 'Hi!'}}], max_tokens=32).text)"
  CLI:     tandem generate --url {grpc_url} --chat "Hi!"
           tandem status --url {grpc_url}
  curl:    curl {http_url}/v1/chat/completions -H 'Content-Type: application/json' \\
             -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hi!"}}], "max_tokens": 32}}'
  openai:  python -c "from openai import OpenAI; c = OpenAI(base_url='{http_url}/v1', api_key='none'); print(c.chat.completions.create(model='{model}', messages=[{{'role': 'user', 'content': 'Hi!'}}], max_tokens=32).choices[0].message.content)"
  metrics: curl {http_url}/metrics
"""  # noqa: E501 (commands to copy whole)


def cmd_status(args: argparse.Namespace) -> int:
    from runtime.client import Client, TandemError

    try:
        with Client(
            args.url,
            api_key=args.api_key,
            timeout=10,
            ca_file=args.ca_file,
            server_name=args.server_name,
        ) as client:
            health = client.health()
            status = client.cluster_status()
    except TandemError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"{args.url}: {health}; {status.mode} serving {status.model!r}; "
        f"{status.num_requests_in_flight} requests in flight; up {status.uptime_s:.0f} s"
    )
    print(
        f"{'worker':<14}{'role':<11}{'healthy':<9}{'queued tok':>11}{'running':>9}"
        f"{'free blocks':>13}  kv address"
    )
    for w in status.workers:
        print(
            f"{w.name:<14}{w.role:<11}{str(w.healthy):<9}{w.num_queued_prompt_tokens:>11}"
            f"{w.num_running:>9}{w.num_free_blocks:>8}/{w.num_total_blocks:<4}  "
            f"{w.kv_address or '-'}"
        )
    if status.balancer_actions:
        print("pool balancer, latest last:")
    for a in status.balancer_actions:
        what = f"{a.kind} {a.source + ' -> ' if a.source else ''}{a.role}"
        print(f"  {a.age_s:>6.0f} s ago  {what}: {a.outcome}  ({a.reason})")
    return 0


def generate_remote(args: argparse.Namespace) -> int:
    """`tandem generate --url`: stream a completion from a running cluster."""
    from runtime.client import Client, TandemError

    kwargs = dict(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
    )
    if args.chat:
        kwargs["messages"] = [{"role": "user", "content": args.prompt}]
    else:
        kwargs["prompt"] = args.prompt
    last = None
    try:
        with Client(
            args.url,
            api_key=args.api_key,
            timeout=args.timeout,
            ca_file=args.ca_file,
            server_name=args.server_name,
        ) as client:
            for chunk in client.stream(**kwargs):
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
                last = chunk
    except TandemError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 2 if e.code.name == "INVALID_ARGUMENT" else 1
    sys.stdout.write("\n")
    if args.timings and last is not None and last.timings is not None:
        print(last.timings.describe(), file=sys.stderr)
    return 0
