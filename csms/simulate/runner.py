"""Many simulated chargers in one process: owned tasks, paced connections, source addresses."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Mapping, Sequence

from csms.simulate.backoff import Backoff, Pacer
from csms.simulate.config import Behaviour, LinkOptions
from csms.simulate.fleet import ChargerProfile
from csms.simulate.link import ChargerLink
from csms.simulate.model import ChargerModel
from csms.simulate.stats import Stats

logger = logging.getLogger(__name__)


def power_on_time(start: float, index: int, connect_rate_per_s: float) -> float:
    """Chargers power on one after another at the fleet's connect rate: the ramp is part of the
    deterministic schedule, and every process of a fan-out agrees on it."""
    return start + index / connect_rate_per_s


class FleetRunner:
    """Run ``profiles`` (this process's share of the fleet) until stopped."""

    def __init__(self, *, profiles: Sequence[ChargerProfile], behaviour: Behaviour, options: LinkOptions,
                 tokens: Sequence[str], seed: int, start: float, processes: int = 1, process_index: int = 0,
                 stats: Stats | None = None, initial_registers: Mapping[str, dict[int, float]] | None = None
                 ) -> None:
        self.stats = stats or Stats()
        self.options = options
        # Each process paces its own share: together they connect at the fleet's rate.
        self.pacer = Pacer(options.connect_rate_per_s / processes)
        # Reconnect jitter need not repeat across runs; one generator per process is enough.
        jitter = random.Random(f"{seed}:backoff:{process_index}")  # noqa: S311 - simulation
        addresses = options.source_addresses
        self.links: list[ChargerLink] = []
        shared_tokens = tuple(tokens)   # one tuple for all: a copy each would cost ~20 KiB a charger at 10k
        for p in profiles:
            model = ChargerModel(p, behaviour, start=power_on_time(start, p.index, options.connect_rate_per_s),
                                 tokens=shared_tokens, seed=seed, counters=self.stats.counters,
                                 initial_registers=dict((initial_registers or {}).get(p.id, {})))
            backoff = Backoff(minimum_s=options.backoff_min_s, maximum_s=options.backoff_max_s,
                              random_range_s=options.backoff_random_range_s, rng=jitter)
            self.links.append(ChargerLink(model, options=options, stats=self.stats, pacer=self.pacer,
                                          backoff=backoff,
                                          source_address=addresses[p.index % len(addresses)] if addresses else None))
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        for link in self.links:
            task = asyncio.create_task(self._guarded(link), name=f"sim-charger-{link.model.profile.id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _guarded(self, link: ChargerLink) -> None:
        try:
            await link.run()
        except asyncio.CancelledError:
            raise
        except Exception:   # one charger's bug must not end the fleet; count it and say so
            self.stats.error("simulator_internal")
            logger.exception("simulated charger %s failed", link.model.profile.id)

    @property
    def active_sessions(self) -> int:
        return sum(link.model.active_sessions for link in self.links)

    async def stop(self, *, timeout_s: float = 10.0, finish_sessions: bool = False) -> None:
        """Close every link (code 1000); cancel what has not finished within ``timeout_s``.

        ``finish_sessions``: connected chargers first end their open sessions (PowerLoss) and
        send what they have queued, so that no session stays open for ever in the data."""
        tasks = list(self._tasks)
        deadline = time.monotonic() + timeout_s
        if finish_sessions and tasks:
            for link in self.links:
                link.finish()
            _, still = await asyncio.wait(tasks, timeout=timeout_s / 2)
            tasks = list(still)
        for link in self.links:
            link.stop()
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=max(0.1, deadline - time.monotonic()))
        for task in pending:
            task.cancel()
        if pending:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*pending, return_exceptions=True)

    async def run_until(self, *, deadline: float, max_messages: int, stop: asyncio.Event,
                        stop_timeout_s: float = 10.0) -> None:
        """Run until ``deadline`` (monotonic), ``max_messages`` CALLs sent (0: no limit) or ``stop``."""
        self.start()
        try:
            while not stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if max_messages and sum(v for k, v in self.stats.counters.items() if k.startswith("sent:")) \
                        >= max_messages:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(0.5, left))
        finally:
            await self.stop(timeout_s=stop_timeout_s)
