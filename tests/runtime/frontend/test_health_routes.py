"""Readiness (/health, /ready) follows the pools; liveness (/live) only the frontend."""

from fastapi import FastAPI
from fastapi.testclient import TestClient

from runtime.frontend.health import add_health_routes


def test_readiness_follows_the_pools_and_liveness_does_not():
    state = {"ready": True, "missing": []}
    app = FastAPI()
    add_health_routes(app, lambda: state["ready"], lambda: state["missing"])
    client = TestClient(app)
    for path in ("/health", "/ready", "/live"):
        r = client.get(path)
        assert r.status_code == 200, path
    state.update(ready=False, missing=["decode"])
    for path in ("/health", "/ready"):
        r = client.get(path)
        assert (r.status_code, r.json()) == (
            503,
            {
                "status": "not_serving",
                "missing_pools": ["decode"],
                "reason": "no live decode worker",
            },
        )
    assert client.get("/live").json() == {"status": "alive"}
    state.update(missing=[])  # draining: every pool is up but the server is shutting down
    assert client.get("/ready").json()["reason"] == "the server is starting or shutting down"
    state.update(ready=True)
    assert client.get("/ready").json() == {"status": "serving"}
