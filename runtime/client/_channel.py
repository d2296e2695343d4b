"""Opening the channel to a frontend: plaintext, or TLS with the system's or a given CA."""

from __future__ import annotations

from pathlib import Path

import grpc

_SCHEMES = {"grpc://": False, "http://": False, "grpcs://": True, "https://": True}


def parse_url(url: str) -> tuple[str, bool]:
    """'HOST:PORT' and whether the scheme asks for TLS (grpcs:// or https://); no scheme:
    plaintext."""
    for prefix, tls in _SCHEMES.items():
        if url.startswith(prefix):
            return url[len(prefix) :], tls
    return url, False


def open_channel(
    url: str,
    *,
    tls: bool | None = None,
    ca_file: str | None = None,
    server_name: str | None = None,
    aio: bool = False,
):
    """A grpc (or grpc.aio) channel to `url`. TLS when `tls`, when the URL's scheme is
    grpcs:// or https://, or when `ca_file` is given; the server's certificate is checked
    against `ca_file` (PEM) or else the system's roots, under `server_name` if set (e.g.
    when dialling an IP address)."""
    target, scheme_tls = parse_url(url)
    module = grpc.aio if aio else grpc
    if not (tls or scheme_tls or ca_file):
        return module.insecure_channel(target)
    roots = Path(ca_file).read_bytes() if ca_file else None
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else None
    return module.secure_channel(target, grpc.ssl_channel_credentials(roots), options=options)


def call_metadata(api_key: str | None) -> tuple:
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()
