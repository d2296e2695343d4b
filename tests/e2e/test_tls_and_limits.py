"""The public endpoints over TLS with an API key (1 prefill + 1 decode on a real local Ray):
the SDK and HTTPS with a CA file, /metrics behind the key, /health open, streams per API
key bounded, and the key never in the frontend's log."""

from __future__ import annotations

import asyncio
import logging
import ssl

import grpc
import httpx
import pytest
from cluster_helpers import tiny_cluster_config, wait_for_free_blocks
from tls_helpers import self_signed_cert

from runtime.client import AsyncClient, Client, ResourceExhaustedError, RetryPolicy, TandemError
from runtime.cluster.background import BackgroundServer

API_KEY = "test-api-key-0123456789"
MAX_STREAMS = 2


@pytest.fixture(scope="module")
def tls_server(tiny_model_dir, tmp_path_factory):
    cert, key = self_signed_cert(tmp_path_factory.mktemp("tls"))
    config = tiny_cluster_config(
        tiny_model_dir,
        {"prefill": {"replicas": 1, "num_cpus": 1}, "decode": {"replicas": 1, "num_cpus": 1}},
        server={
            "grpc_port": 0,
            "http_port": 0,
            "max_streams_per_key": MAX_STREAMS,
            "tls": {"cert_file": str(cert), "key_file": str(key)},
        },
        auth={"api_key": API_KEY},
    )
    with BackgroundServer(config) as server:
        yield server, str(cert)


def test_sdk_and_https_over_tls_with_the_key(tls_server, caplog):
    server, ca = tls_server
    caplog.set_level(logging.DEBUG)
    assert server.grpc_url.startswith("grpcs://127.0.0.1:")
    assert server.http_url.startswith("https://127.0.0.1:")
    with Client(server.grpc_url, api_key=API_KEY, ca_file=ca) as client:
        out = client.generate("Hello world!", max_tokens=4, temperature=0.0, ignore_eos=True)
        assert len(out.token_ids) == 4 and client.health() == "SERVING"
    plain = server.grpc_url.replace("grpcs://", "")
    with Client(plain, api_key=API_KEY, timeout=5, retry=RetryPolicy(max_attempts=1)) as client:
        with pytest.raises(TandemError) as info:
            client.generate("Hello", max_tokens=2)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE  # no plaintext on a TLS port
    auth = {"Authorization": f"Bearer {API_KEY}"}
    trusted = ssl.create_default_context(cafile=ca)
    with httpx.Client(base_url=server.http_url, verify=trusted, timeout=30) as http:
        assert http.get("/health").status_code == 200  # open for load balancers
        assert http.get("/metrics").status_code == 401
        assert http.get("/v1/models").status_code == 401
        assert "tandem:time_to_first_token_seconds" in http.get("/metrics", headers=auth).text
        r = http.post(
            "/v1/completions",
            headers=auth,
            json={"prompt": "Hello", "max_tokens": 3, "ignore_eos": True},
        )
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    with pytest.raises(httpx.ConnectError):  # the certificate is not trusted by default
        httpx.get(f"{server.http_url}/health")
    assert API_KEY not in caplog.text


def test_streams_per_api_key_are_bounded(tls_server):
    server, ca = tls_server
    long = dict(max_tokens=400, temperature=0.0, ignore_eos=True)

    async def run():
        async with AsyncClient(
            server.grpc_url,
            api_key=API_KEY,
            ca_file=ca,
            timeout=60,
            retry=RetryPolicy(max_attempts=1),
        ) as client:
            streams = [client.stream("The quick brown fox", **long) for _ in range(MAX_STREAMS)]
            firsts = [await anext(s) for s in streams]  # both admitted and streaming
            with pytest.raises(ResourceExhaustedError) as info:
                await client.generate("Hello", max_tokens=2)
            trusted = ssl.create_default_context(cafile=ca)
            async with httpx.AsyncClient(base_url=server.http_url, verify=trusted) as http:
                r = await http.post(
                    "/v1/completions",
                    json={"prompt": "Hi", "max_tokens": 2},
                    headers={"Authorization": f"Bearer {API_KEY}"},
                )
            for s in streams:
                await s.aclose()
            return firsts, info.value, r

    firsts, error, r = asyncio.run(run())
    assert all(f.token_ids for f in firsts)
    assert f"this API key has {MAX_STREAMS} requests in flight" in error.details
    assert (r.status_code, r.headers.get("retry-after")) == (429, "1")
    assert set(wait_for_free_blocks(server).values()) == {256}
    with Client(server.grpc_url, api_key=API_KEY, ca_file=ca) as client:  # slots came back
        assert len(client.generate("Hello", max_tokens=2, ignore_eos=True).token_ids) == 2
