"""The control plane's policies, in plain Python over workers' load snapshots."""

from scheduler.load import LoadSnapshot
from scheduler.router import NoWorkerError, Router

__all__ = ["LoadSnapshot", "NoWorkerError", "Router"]
