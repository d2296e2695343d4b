"""Authentication of the KV channel: a cluster secret in call metadata, TLS optional."""

from __future__ import annotations

import hmac
from pathlib import Path

import grpc

from runtime.kv_transfer.config import KVTransferConfig, TLSConfig

SECRET_METADATA_KEY = "tandem-kv-secret"


def secret_metadata(secret: str) -> tuple[tuple[str, str], ...]:
    """The metadata a sender attaches to every call."""
    return ((SECRET_METADATA_KEY, secret),)


class SecretCheck(grpc.ServerInterceptor):
    """Refuses, with UNAUTHENTICATED, every call whose secret is missing or wrong.

    The comparison takes constant time in the secret's contents (hmac.compare_digest).
    """

    def __init__(self, secret: str):
        self._secret = secret.encode()

        def deny(request_or_iterator, context):
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"missing or wrong cluster secret in the {SECRET_METADATA_KEY!r} metadata entry",
            )

        self._deny = grpc.stream_unary_rpc_method_handler(deny)
        self._deny_unary = grpc.unary_unary_rpc_method_handler(deny)

    def intercept_service(self, continuation, handler_call_details):
        given = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == SECRET_METADATA_KEY:
                given = value
        if isinstance(given, str):
            given = given.encode()
        if hmac.compare_digest(given, self._secret):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is not None and handler.request_streaming:
            return self._deny
        return self._deny_unary


def server_credentials(tls: TLSConfig) -> grpc.ServerCredentials:
    if not (tls.cert_file and tls.key_file):
        raise ValueError("TLS on the receiver needs cert_file and key_file")
    pair = (Path(tls.key_file).read_bytes(), Path(tls.cert_file).read_bytes())
    return grpc.ssl_server_credentials([pair])


def channel_credentials(tls: TLSConfig) -> grpc.ChannelCredentials:
    roots = Path(tls.ca_file).read_bytes() if tls.ca_file else None
    return grpc.ssl_channel_credentials(root_certificates=roots)


def make_channel(target: str, config: KVTransferConfig) -> grpc.Channel:
    """A sender's channel to a receiver: TLS when configured, message limits, keepalive."""
    options: list[tuple[str, int | str]] = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
    ]
    if config.tls is None:
        return grpc.insecure_channel(target, options=options)
    if config.tls.server_name:
        options.append(("grpc.ssl_target_name_override", config.tls.server_name))
    return grpc.secure_channel(target, channel_credentials(config.tls), options=options)
