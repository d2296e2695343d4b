"""The control plane's policies, in plain Python over workers' load snapshots."""

from scheduler.admission import Overloaded
from scheduler.config import SchedulerConfig
from scheduler.load import LoadSnapshot
from scheduler.router import NoWorkerError, Router

__all__ = ["LoadSnapshot", "NoWorkerError", "Overloaded", "Router", "SchedulerConfig"]
