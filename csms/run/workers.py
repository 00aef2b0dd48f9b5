"""What a gateway worker of ``csms run|serve --workers N`` is, and what its supervisor gives it.

Kept apart from the supervisor so that a worker process (``csms.run.central``) imports only this.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
from dataclasses import dataclass
from typing import Any

from schemas.settings import SETTINGS_FIELDS, Settings, env_name

# Open files a worker needs besides its chargers: listening sockets, the broker session, log and outbox
# files, the event loop's own descriptors, HTTP clients (an idle worker holds 12) — on top of the pool.
FD_RESERVE_PER_WORKER = 100


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    """A worker's place on its host: index, the host's node id, its own metrics port."""

    index: int
    node: str
    metrics_port: int

    @property
    def labels(self) -> dict[str, str]:
        return {"node": self.node, "worker": str(self.index)}


def worker_node_id(node: str, index: int) -> str:
    return f"{node}-w{index}"


def raise_open_files_limit() -> int:
    """Raise the soft open-files limit to the hard one (children inherit it); the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return int(soft)


def chargers_per_worker(open_files_limit: int, settings: Settings) -> int:
    return max(0, open_files_limit - settings.db_pool_max - FD_RESERVE_PER_WORKER)


def settings_environment(settings: Settings, **overrides: Any) -> dict[str, str]:
    """The environment that gives a child exactly these settings (every ``CSMS_*`` variable set)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CSMS_")}
    for field in SETTINGS_FIELDS:
        value = overrides.get(field.name, getattr(settings, field.name))
        env[env_name(field.name)] = ("" if value is None else ("true" if value else "false")
                                     if isinstance(value, bool) else str(value))
    return env


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-returncode).name}"
        return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"
