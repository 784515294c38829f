"""The behaviour every ScopeManager has (quilt_agent/scopes.py): subclassed with fixtures `scopes` (the
implementation) and `probe` (how to see, without it, which unit holds a process and what the unit was given).

The processes put into scopes are throwaway `sleep`s, children of the test held by pidfd (so a kill reaches only
them) and reaped by it: a dead pid is one no process has.
"""
from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Iterator, Protocol

import pytest

from quilt_agent.errors import ContainerFailed
from quilt_agent.scopes import ScopeLimits, ScopeManager
from tests.contract.protocols import missing_methods

DEADLINE = 10.0  # seconds for a killed process to be gone
# Throwaways that tell a stop signal from a kill: one exits 7 on SIGUSR1, one outlives SIGTERM (a trap of "" is
# an ignored signal, inherited by its sleep). Each says "ready" once its trap is set.
TRAPS_USR1 = ("sh", "-c", "trap 'exit 7' USR1; echo ready; while :; do sleep 0.05; done")
IGNORES_TERM = ("sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done")


@dataclass(frozen=True)
class ScopeView:
    """What a scope was given, as the probe sees it; 0 = no limit."""

    description: str
    limits: ScopeLimits


class ScopeProbe(Protocol):
    async def unit_of(self, pid: int) -> str | None:
        """The scope unit holding the running process pid, None when there is none."""

    async def scope(self, unit: str) -> ScopeView:
        """The description and limits of a scope that runs."""

    async def stop_as_host(self, unit: str) -> None:
        """Stop the unit as an administrator would (`systemctl stop`), not through the ScopeManager."""

    async def run_service(self, unit: str) -> None:
        """Start a service of the host's with Delegate=yes, as a generated container unit is."""

    async def loaded(self, unit: str) -> bool:
        """Whether systemd still has the unit loaded (systemctl's LoadState "loaded")."""


@dataclass
class Throwaway:
    process: subprocess.Popen[bytes]
    pidfd: int

    @property
    def pid(self) -> int:
        return self.process.pid

    def exited(self) -> bool:
        return bool(select.select([self.pidfd], [], [], 0)[0])

    def wait_exited(self, timeout: float = DEADLINE) -> None:
        """Until it has exited (a zombie yet: reap() collects it)."""
        assert select.select([self.pidfd], [], [], timeout)[0], f"process {self.pid} still runs"

    def kill(self) -> None:
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def reap(self) -> None:
        self.kill()
        self.process.wait(DEADLINE)


Spawn = Callable[..., Throwaway]  # (command=["sleep", "60"])


class ScopesContract:
    """Subclasses provide the fixtures `scopes` (a ScopeManager) and `probe` (a ScopeProbe)."""

    @pytest.fixture
    def spawn(self) -> Iterator[Spawn]:
        made: list[Throwaway] = []

        def spawn(command: tuple[str, ...] = ("sleep", "60")) -> Throwaway:
            ready = command != ("sleep", "60")
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.PIPE if ready else subprocess.DEVNULL)
            if ready:
                assert process.stdout is not None and process.stdout.readline() == b"ready\n"
            made.append(Throwaway(process, os.pidfd_open(process.pid)))
            return made[-1]

        yield spawn
        for p in made:
            p.reap()
            os.close(p.pidfd)
            if p.process.stdout is not None:
                p.process.stdout.close()

    @pytest.fixture
    async def unit(self, scopes: ScopeManager) -> AsyncIterator[str]:
        """A unit name of this test's own (quilt-*.scope, as the agent's are), stopped afterwards."""
        name = f"quilt-contract-{uuid.uuid4().hex[:12]}.scope"
        yield name
        await scopes.stop(name)

    @pytest.fixture
    async def service(self, scopes: ScopeManager, probe: ScopeProbe) -> AsyncIterator[str]:
        """A running delegated service of this test's own, stopped afterwards."""
        name = f"quilt-contract-{uuid.uuid4().hex[:12]}.service"
        await probe.run_service(name)
        yield name
        await scopes.stop_service(name)

    @staticmethod
    def dead_pid(spawn: Spawn) -> int:
        p = spawn()
        p.reap()
        return p.pid

    async def test_it_offers_every_method_of_the_protocol(self, scopes: ScopeManager) -> None:
        assert missing_methods(ScopeManager, scopes) == []

    # --- attach to a service -----------------------------------------------------------------------

    async def test_attach_puts_the_pids_in_the_service_with_the_limits(self, scopes: ScopeManager,
                                                                      probe: ScopeProbe, service: str,
                                                                      spawn: Spawn) -> None:
        p = spawn()
        await scopes.attach(service, [p.pid], ScopeLimits(memory_max=64 << 20, cpu_quota=25.0, tasks_max=9))
        assert await probe.unit_of(p.pid) == service
        limits = (await probe.scope(service)).limits
        assert (limits.memory_max, limits.cpu_quota, limits.tasks_max) == (64 << 20, 25.0, 9)

    async def test_attach_to_a_service_that_does_not_run_is_refused(self, scopes: ScopeManager, probe: ScopeProbe,
                                                                    spawn: Spawn) -> None:
        p = spawn()
        name = f"quilt-contract-{uuid.uuid4().hex[:12]}.service"
        with pytest.raises(ContainerFailed, match="could not put the container into"):
            await scopes.attach(name, [p.pid], ScopeLimits())
        assert await probe.unit_of(p.pid) != name

    async def test_stop_service_ends_the_attached_processes(self, scopes: ScopeManager, service: str,
                                                           spawn: Spawn) -> None:
        p = spawn()
        await scopes.attach(service, [p.pid], ScopeLimits())
        await scopes.stop_service(service)
        p.wait_exited()

    # --- start -------------------------------------------------------------------------------------

    async def test_start_puts_the_pids_in_the_unit(self, scopes: ScopeManager, probe: ScopeProbe, unit: str,
                                                   spawn: Spawn) -> None:
        a, b = spawn(), spawn()
        assert await probe.unit_of(a.pid) != unit
        await scopes.start(unit, [a.pid, b.pid], "contract", ScopeLimits())
        assert await probe.unit_of(a.pid) == unit
        assert await probe.unit_of(b.pid) == unit

    async def test_a_start_expected_ahead_puts_the_pids_in_the_unit_and_leaves_the_caller_where_it_was(
            self, scopes: ScopeManager, probe: ScopeProbe, unit: str, spawn: Spawn) -> None:
        a = spawn()
        own = await probe.unit_of(os.getpid())
        scopes.expect_move()
        await scopes.start(unit, [a.pid], "contract", ScopeLimits())
        assert await probe.unit_of(a.pid) == unit
        assert await probe.unit_of(os.getpid()) == own

    async def test_start_applies_the_description_and_limits(self, scopes: ScopeManager, probe: ScopeProbe,
                                                             unit: str, spawn: Spawn) -> None:
        limits = ScopeLimits(memory_max=64 << 20, cpu_quota=50.0, tasks_max=7)
        await scopes.start(unit, [spawn().pid], "Quilt container contract", limits)
        assert await probe.scope(unit) == ScopeView("Quilt container contract", limits)

    async def test_start_applies_the_kill_signal_and_stop_timeout(self, scopes: ScopeManager, probe: ScopeProbe,
                                                                  unit: str, spawn: Spawn) -> None:
        await scopes.start(unit, [spawn().pid], "contract", ScopeLimits(kill_signal=signal.SIGUSR1,
                                                                        stop_timeout_usec=3_000_000))
        limits = (await probe.scope(unit)).limits
        assert (limits.kill_signal, limits.stop_timeout_usec) == (signal.SIGUSR1, 3_000_000)

    async def test_start_without_limits_leaves_memory_and_cpu_unlimited(
            self, scopes: ScopeManager, probe: ScopeProbe, unit: str, spawn: Spawn) -> None:
        await scopes.start(unit, [spawn().pid], "contract", ScopeLimits())
        view = await probe.scope(unit)
        # TasksMax is not asserted: systemd gives every scope its DefaultTasksMax when none is asked for.
        assert (view.limits.memory_max, view.limits.cpu_quota) == (0, 0.0)

    async def test_a_started_unit_is_among_the_active_scopes(self, scopes: ScopeManager, unit: str,
                                                             spawn: Spawn) -> None:
        assert unit not in await scopes.active_scopes()
        await scopes.start(unit, [spawn().pid], "contract", ScopeLimits())
        assert unit in await scopes.active_scopes()

    async def test_a_scope_whose_processes_all_ended_is_collected_without_a_stop(
            self, scopes: ScopeManager, probe: ScopeProbe, unit: str, spawn: Spawn) -> None:
        # What a removal of a container whose init ended in a pid namespace of its own counts on: no StopUnit.
        process = spawn()
        await scopes.start(unit, [process.pid], "contract", ScopeLimits())
        process.reap()
        deadline = time.monotonic() + DEADLINE
        while await probe.loaded(unit) or unit in await scopes.active_scopes():
            assert time.monotonic() < deadline, f"{unit} is still loaded {DEADLINE:g} s after its process ended"
            await asyncio.sleep(0.01)

    async def test_start_of_a_name_running_live_processes_is_refused_and_leaves_them(
            self, scopes: ScopeManager, probe: ScopeProbe, unit: str, spawn: Spawn) -> None:
        first, second = spawn(), spawn()
        await scopes.start(unit, [first.pid], "contract", ScopeLimits())
        with pytest.raises(ContainerFailed, match="already exists and runs 1 processes"):
            await scopes.start(unit, [second.pid], "contract", ScopeLimits())
        assert not first.exited()
        assert await probe.unit_of(first.pid) == unit
        assert await probe.unit_of(second.pid) != unit

    async def test_start_of_a_name_whose_processes_are_gone_clears_the_stale_scope(
            self, scopes: ScopeManager, probe: ScopeProbe, unit: str, spawn: Spawn) -> None:
        first = spawn()
        await scopes.start(unit, [first.pid], "former run", ScopeLimits())
        first.reap()
        second = spawn()
        await scopes.start(unit, [second.pid], "next run", ScopeLimits(tasks_max=5))
        assert await probe.unit_of(second.pid) == unit
        assert await probe.scope(unit) == ScopeView("next run", ScopeLimits(tasks_max=5))

    async def test_start_with_a_dead_pid_fails_naming_the_pid(self, scopes: ScopeManager, unit: str,
                                                              spawn: Spawn) -> None:
        pid = self.dead_pid(spawn)
        with pytest.raises(ContainerFailed, match=f"UnixProcessIdUnknown.*{pid}"):
            await scopes.start(unit, [pid], "contract", ScopeLimits())
        assert unit not in await scopes.active_scopes()

    async def test_start_with_a_dead_pid_among_live_ones_puts_none_in_the_unit(
            self, scopes: ScopeManager, probe: ScopeProbe, unit: str, spawn: Spawn) -> None:
        live = spawn()
        with pytest.raises(ContainerFailed):
            await scopes.start(unit, [live.pid, self.dead_pid(spawn)], "contract", ScopeLimits())
        assert await probe.unit_of(live.pid) != unit
        assert not live.exited()

    async def test_start_without_pids_is_refused(self, scopes: ScopeManager, unit: str) -> None:
        with pytest.raises(ContainerFailed, match=f"could not create scope {unit}: .*InvalidArgs"):
            await scopes.start(unit, [], "contract", ScopeLimits())
        assert unit not in await scopes.active_scopes()

    @pytest.mark.parametrize("name, error", [
        ("quilt-contract.service", "PropertyReadOnly"),  # a unit, but one that takes no PIDs
        ("quilt contract.scope", "InvalidArgs: Invalid unit name"),
        ("quilt-contract", "InvalidArgs: Invalid unit name"),
    ])
    async def test_start_with_a_name_that_is_no_scopes_is_refused(self, scopes: ScopeManager, spawn: Spawn,
                                                                   name: str, error: str) -> None:
        p = spawn()
        with pytest.raises(ContainerFailed, match=f"systemd could not create scope {name}: .*{error}"):
            await scopes.start(name, [p.pid], "contract", ScopeLimits())
        assert not p.exited()

    # --- stop --------------------------------------------------------------------------------------

    async def test_stop_ends_the_processes_and_the_unit_leaves_the_active_scopes(
            self, scopes: ScopeManager, unit: str, spawn: Spawn) -> None:
        a, b = spawn(), spawn()
        await scopes.start(unit, [a.pid, b.pid], "contract", ScopeLimits())
        await scopes.stop(unit)
        a.wait_exited()
        b.wait_exited()
        assert unit not in await scopes.active_scopes()

    async def test_stop_leaves_other_scopes_running(self, scopes: ScopeManager, probe: ScopeProbe, unit: str,
                                                    spawn: Spawn) -> None:
        other_unit = unit.replace(".scope", "-other.scope")
        mine, other = spawn(), spawn()
        await scopes.start(unit, [mine.pid], "contract", ScopeLimits())
        await scopes.start(other_unit, [other.pid], "contract", ScopeLimits())
        try:
            await scopes.stop(unit)
            mine.wait_exited()
            assert not other.exited()
            assert await probe.unit_of(other.pid) == other_unit
            assert other_unit in await scopes.active_scopes()
        finally:
            await scopes.stop(other_unit)

    async def test_stop_of_an_unknown_unit_is_a_no_op(self, scopes: ScopeManager, unit: str) -> None:
        await scopes.stop(unit)
        assert unit not in await scopes.active_scopes()

    async def test_stop_sends_the_kill_signal_first(self, scopes: ScopeManager, unit: str, spawn: Spawn) -> None:
        p = spawn(TRAPS_USR1)
        await scopes.start(unit, [p.pid], "contract", ScopeLimits(kill_signal=signal.SIGUSR1,
                                                                  stop_timeout_usec=30_000_000))
        started = time.monotonic()
        await scopes.stop(unit)
        assert p.process.wait(DEADLINE) == 7  # its trap ran: not killed
        assert time.monotonic() - started < 10

    async def test_stop_kills_what_outlives_the_stop_timeout(self, scopes: ScopeManager, unit: str,
                                                               spawn: Spawn) -> None:
        p = spawn(IGNORES_TERM)
        await scopes.start(unit, [p.pid], "contract", ScopeLimits(stop_timeout_usec=1_000_000))
        started = time.monotonic()
        await scopes.stop(unit)
        assert p.process.wait(DEADLINE) == -signal.SIGKILL
        took = time.monotonic() - started
        assert took >= 1.0 and took < 1.0 + DEADLINE, took  # SIGKILL after the stop timeout, not before

    # --- kill --------------------------------------------------------------------------------------

    async def test_kill_signals_every_process_and_leaves_the_scope(self, scopes: ScopeManager, probe: ScopeProbe,
                                                                    unit: str, spawn: Spawn) -> None:
        trapping, plain = spawn(TRAPS_USR1), spawn()
        await scopes.start(unit, [trapping.pid, plain.pid], "contract", ScopeLimits())
        await scopes.kill(unit, signal.SIGUSR1)
        assert trapping.process.wait(DEADLINE) == 7
        assert plain.process.wait(DEADLINE) == -signal.SIGUSR1

    async def test_kill_of_an_unknown_unit_is_a_no_op(self, scopes: ScopeManager, unit: str) -> None:
        await scopes.kill(unit, signal.SIGTERM)
        assert unit not in await scopes.active_scopes()

    # --- stop_cause ------------------------------------------------------------------------------

    async def test_a_stop_by_the_host_is_told(self, scopes: ScopeManager, probe: ScopeProbe, unit: str,
                                              spawn: Spawn) -> None:
        p = spawn()
        await scopes.start(unit, [p.pid], "contract", ScopeLimits())
        assert await scopes.stop_cause(unit) == ""
        await probe.stop_as_host(unit)
        p.wait_exited()
        assert await scopes.stop_cause(unit) == "user"

    async def test_its_own_stop_and_a_process_ending_are_no_stop_by_the_host(
            self, scopes: ScopeManager, unit: str, spawn: Spawn) -> None:
        p = spawn()
        await scopes.start(unit, [p.pid], "contract", ScopeLimits())
        await scopes.stop(unit)
        assert await scopes.stop_cause(unit) == ""
        other = unit.replace(".scope", "-ends.scope")
        q = spawn()
        await scopes.start(other, [q.pid], "contract", ScopeLimits())
        q.reap()
        assert await scopes.stop_cause(other) == ""

    async def test_a_new_start_forgets_a_stop_by_the_host(self, scopes: ScopeManager, probe: ScopeProbe,
                                                         unit: str, spawn: Spawn) -> None:
        await scopes.start(unit, [spawn().pid], "contract", ScopeLimits())
        await probe.stop_as_host(unit)
        await scopes.start(unit, [spawn().pid], "contract", ScopeLimits())
        assert await scopes.stop_cause(unit) == ""

    async def test_a_stopped_name_can_be_started_again(self, scopes: ScopeManager, probe: ScopeProbe, unit: str,
                                                       spawn: Spawn) -> None:
        await scopes.start(unit, [spawn().pid], "contract", ScopeLimits())
        await scopes.stop(unit)
        again = spawn()
        await scopes.start(unit, [again.pid], "contract", ScopeLimits())
        assert await probe.unit_of(again.pid) == unit

