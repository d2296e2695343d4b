"""Health endpoints for load balancers and Kubernetes probes.

- `/health` and `/ready` (readiness): 200 while every pool the request path needs has a live
  worker and the server is not shutting down; 503 otherwise, with the pools that have none.
  A load balancer sends traffic only to a ready frontend; Kubernetes' readinessProbe.
- `/live` (liveness): 200 while the frontend's event loop answers, whatever the workers'
  state: restarting the frontend would not bring a dead worker back (Ray restarts it), so a
  livenessProbe must not fail while a pool is down.
The gRPC health service follows the same readiness (`Frontend._report_health`).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from fastapi.responses import JSONResponse

HEALTH_PATHS = ("/health", "/ready", "/live")


def add_health_routes(
    app: FastAPI, is_ready: Callable[[], bool], missing_pools: Callable[[], list[str]]
) -> None:
    """Adds `HEALTH_PATHS` to `app`. `missing_pools()` names the pools with no live worker."""

    def readiness() -> JSONResponse:
        if is_ready():
            return JSONResponse({"status": "serving"})
        missing = missing_pools()
        reason = (
            f"no live {' or '.join(missing)} worker"
            if missing
            else "the server is starting or shutting down"
        )
        return JSONResponse(
            {"status": "not_serving", "missing_pools": missing, "reason": reason},
            status_code=503,
        )

    app.add_api_route("/health", readiness, methods=["GET"])
    app.add_api_route("/ready", readiness, methods=["GET"])
    app.add_api_route("/live", lambda: JSONResponse({"status": "alive"}), methods=["GET"])
