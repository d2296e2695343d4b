"""How the frontend holds a worker actor: its handle and the addresses of its process."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WorkerHandle:
    """A started worker actor and what the frontend needs to route to it. `kv_address` and
    `incarnation` belong to one process of the actor: a restarted actor has new ones
    (`refreshed` reads them)."""

    name: str
    role: str
    actor: Any  # a ray.actor.ActorHandle: its methods exist only at run time (`.remote()`)
    kv_address: str = ""  # decode workers: their KV receiver
    max_model_len: int = 0
    incarnation: str = ""

    @classmethod
    def from_info(cls, actor, info: dict) -> "WorkerHandle":
        return cls(
            info["name"],
            info["role"],
            actor,
            info["kv_address"],
            info["max_model_len"],
            info["incarnation"],
        )

    async def refreshed(self) -> "WorkerHandle":
        """This handle with the addresses of the actor's current process."""
        return WorkerHandle.from_info(self.actor, await self.actor.info.remote())
