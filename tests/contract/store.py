"""The behaviour every state store has (quilt_agent/store.py's Store, tests/fakes/store.py's MemoryStore):
subclassed with the fixture `store`, a new empty store closed after the test.

Reads wait for no write, so each test awaits a write's future or flush() before it reads what it wrote.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3

import pytest

from quilt_agent import store as store_module
from quilt_agent.model import Container, ContainerSpec, State, now_usec
from quilt_agent.network.model import Attachment, Network, PortMapping
from quilt_agent.volume_options import Volume
from tests.contract.protocols import missing_methods
from quilt_agent.store import StateStore


def container(name: str = "web", created_at: int = 1) -> Container:
    # The id from the name: a test's containers differ in both.
    return Container(id=name.encode().hex().ljust(64, "0"), created_at=created_at,
                     spec=ContainerSpec(name=name, image="/x.tar", image_id="a" * 64, command=("/bin/true",)))


def every_field_spec(name: str) -> ContainerSpec:
    """A spec whose every field differs from its default."""
    return ContainerSpec(
        name=name, image="docker.io/library/alpine:3", image_id="f" * 64, command=("/bin/sh", "-c", "echo 'hi' \"x\""),
        env=("A=1", "B=two words"), workdir="/srv", user="1000:1000", hostname="h1", memory_max=64 << 20,
        cpu_quota=12.5, pids_max=50, namespaces=("pid", "mount", "net"), remove_on_exit=True, stop_timeout=3,
        labels={"k": "v", "ünï": "cödé"}, stop_signal=15, networks=("front", "back"), aliases=("db", "db.local"),
        ip="10.89.0.9", ports=("8080:80/tcp", "127.0.0.1:53:53/udp"), volumes=("data:/data:ro", "/srv:/srv"),
        tmpfs=("/run:size=1m,mode=755",), read_only=True, anonymous_volumes=("quilt_anon1",),
        setup=("apk: add curl",), setup_cache=False, seccomp="unconfined", userns="host", init=True, restart_policy="on-failure", restart_max=4,
        health_cmd=("/bin/sh", "-c", "test -e /ok"), health_interval=0.5, health_timeout=2.0, health_start_period=7.0,
        health_retries=5, health_on_failure="kill", sdnotify="container", log_driver="k8s-file", log_max_size=1 << 20, log_max_files=3,
        unit="web.service",
        cap_add=("NET_RAW",), cap_drop=("MKNOD", "CHOWN"), add_hosts=("db:10.0.0.5",), dns_servers=("1.1.1.1",),
        dns_search=("example.com",), dns_options=("ndots:2",),
    )


def network(name: str = "front", index: int = 1, created_at: int = 1) -> Network:
    return Network(id=f"{index:064x}", name=name, subnet=f"10.89.{index}.0/24", gateway=f"10.89.{index}.1",
                   bridge=f"quilt{index}", internal=True, dns=False, created_at=created_at)


def attachment(c: Container, n: Network, position: int = 0, host: int = 10) -> Attachment:
    """c's address n.host (10.89.1.10 by default) on n, as its interface eth{position}."""
    return Attachment(container_id=c.id, network_id=n.id, address=f"{n.gateway[:-1]}{host}", position=position)


class StoreContract:
    """Subclasses provide the fixture `store` (an empty StateStore)."""

    async def test_it_offers_every_method_of_the_protocol(self, store: StateStore) -> None:
        assert missing_methods(StateStore, store) == []

    # --- containers ------------------------------------------------------------------------------

    async def test_a_container_round_trips_with_every_spec_field(self, store: StateStore) -> None:
        c = container("web").with_(spec=every_field_spec("web"), state=State.CREATED, created_at=now_usec(),
                                   owner_uid=1000, id_first=524288)  # the store keeps what it is given
        assert all(getattr(c.spec, f.name) != f.default for f in dataclasses.fields(ContainerSpec)
                   if f.default is not dataclasses.MISSING)
        await store.insert_container(c)
        (back,) = await store.containers()
        assert back == c
        assert type(back.spec.command) is tuple and type(back.spec.ports) is tuple
        assert type(back.spec.labels) is dict

    async def test_insert_keeps_the_spec_state_and_creation_time_and_starts_the_status_at_defaults(
            self, store: StateStore) -> None:
        c = container()
        await store.insert_container(c.with_(state=State.RUNNING, exit_code=3, main_pid=7, setup_image="s"))
        (back,) = await store.containers()
        assert back == c.with_(state=State.RUNNING)

    async def test_update_status_round_trips_every_status_field_and_keeps_the_spec(
            self, store: StateStore) -> None:
        c = container()
        await store.insert_container(c)
        done = c.with_(state=State.FAILED, started_at=2, finished_at=3, exit_code=137, exit_signal=9, oom_killed=True,
                       failure_reason="out of memory", monitor_pid=41, monitor_start=123456, main_pid=42,
                       setup_image="e" * 64, restart_count=3, restart_streak=2, restart_at=5, user_stopped=True,
                       health="unhealthy", ready=True, notify_status="serving 3 clients",
                       machine="/org/freedesktop/machine1/machine/a_2db", machine_name="a-b")
        await store.update_status(done.with_(spec=every_field_spec("other"), created_at=99))
        (back,) = await store.containers()
        assert back == done

    async def test_rename_changes_the_name_and_spec_and_keeps_the_status(self, store: StateStore) -> None:
        c = container()
        await store.insert_container(c)
        done = c.with_(state=State.EXITED, exit_code=3)
        await store.update_status(done)
        renamed = every_field_spec("other")
        await store.rename_container(c.id, renamed)
        (back,) = await store.containers()
        assert back == done.with_(spec=renamed) and back.name == "other"

    async def test_rename_to_a_taken_name_is_refused(self, store: StateStore) -> None:
        first, second = container("web"), container("db", created_at=2)
        await store.insert_container(first)
        await store.insert_container(second)
        with pytest.raises(sqlite3.IntegrityError):
            await store.rename_container(second.id, every_field_spec("web"))
        assert [c.name for c in await store.containers()] == ["web", "db"]

    async def test_update_status_of_an_unknown_container_stores_nothing(self, store: StateStore) -> None:
        await store.update_status(container().with_(state=State.RUNNING))
        assert await store.containers() == []

    async def test_containers_come_oldest_first(self, store: StateStore) -> None:
        for name, at in [("b", 20), ("c", 30), ("a", 10)]:
            store.insert_container(container(name, created_at=at))
        await store.flush()
        assert [c.name for c in await store.containers()] == ["a", "b", "c"]

    async def test_a_read_container_is_a_copy(self, store: StateStore) -> None:
        await store.insert_container(container().with_(spec=every_field_spec("web")))
        (first,) = await store.containers()
        first.spec.labels["k"] = "changed"
        (second,) = await store.containers()
        assert second.spec.labels["k"] == "v"

    async def test_delete_removes_the_container_with_its_addresses_and_ports(self, store: StateStore) -> None:
        gone, kept, n = container("gone"), container("kept"), network()
        store.insert_network(n)
        for c, port in [(gone, 8080), (kept, 8081)]:
            store.insert_container(c)
            store.insert_attachments(c.id, [attachment(c, n, host=port - 8000)], [PortMapping("tcp", "", port, 80)])
        await store.delete_container(gone.id)
        assert await store.containers() == [kept]
        assert await store.attachments() == [attachment(kept, n, host=81)]
        assert await store.ports() == [(kept.id, PortMapping("tcp", "", 8081, 80))]

    async def test_delete_of_an_unknown_container_is_no_error(self, store: StateStore) -> None:
        await store.delete_container("0" * 64)

    async def test_a_taken_name_is_refused_and_the_writes_behind_it_land(self, store: StateStore) -> None:
        first = container("web")
        twin = container("web").with_(id="9" * 64, created_at=5)
        store.insert_container(first)
        refused = store.insert_container(twin)
        after = store.insert_container(container("db", created_at=2))
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE constraint failed: containers.name") as error:
            await refused
        assert error.value.sqlite_errorname == "SQLITE_CONSTRAINT_UNIQUE"
        await after
        assert [c.id for c in await store.containers()] == [first.id, container("db").id]

    async def test_a_taken_id_is_refused(self, store: StateStore) -> None:
        store.insert_container(container("web"))
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE constraint failed: containers.id"):
            await store.insert_container(container("web").with_(spec=every_field_spec("other")))

    async def test_a_failed_write_is_logged(self, store: StateStore, caplog: pytest.LogCaptureFixture) -> None:
        store.insert_container(container())
        refused = store.insert_container(container())
        await store.flush()
        assert refused.done() and isinstance(refused.exception(), sqlite3.IntegrityError)
        assert [(r.name, r.levelno) for r in caplog.records
                if "could not write to the store: UNIQUE constraint failed" in r.getMessage()] \
            == [("quilt.store", logging.ERROR)]

    # --- networks, addresses and ports -----------------------------------------------------------

    async def test_networks_round_trip_and_come_oldest_first(self, store: StateStore) -> None:
        newer, older = network("back", 2, created_at=20).with_(owner_uid=1000), network("front", 1, created_at=10)
        store.insert_network(newer)
        await store.insert_network(older)
        assert await store.networks() == [older, newer]

    async def test_update_network_changes_only_its_subnet_and_gateway(self, store: StateStore) -> None:
        n = network()
        store.insert_network(n)
        await store.update_network(n.with_(subnet="10.90.0.0/16", gateway="10.90.0.1", name="renamed", bridge="x"))
        assert await store.networks() == [n.with_(subnet="10.90.0.0/16", gateway="10.90.0.1")]

    @pytest.mark.parametrize("column", ["name", "subnet", "bridge"])
    async def test_a_network_whose_name_subnet_or_bridge_is_taken_is_refused(self, store: StateStore,
                                                                             column: str) -> None:
        first = network("front", 1)
        twin = dataclasses.replace(network("back", 2), **{column: getattr(first, column)})
        store.insert_network(first)
        with pytest.raises(sqlite3.IntegrityError, match=f"UNIQUE constraint failed: networks.{column}"):
            await store.insert_network(twin)
        assert await store.networks() == [first]

    async def test_delete_network_round_trip(self, store: StateStore) -> None:
        a, b = network("a", 1), network("b", 2)
        store.insert_network(a)
        store.insert_network(b)
        await store.delete_network(a.id)
        assert await store.networks() == [b]

    async def test_a_network_with_an_address_on_it_cannot_be_deleted(self, store: StateStore) -> None:
        c, n = container(), network()
        store.insert_network(n)
        store.insert_container(c)
        store.insert_attachments(c.id, [attachment(c, n)], [])
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY constraint failed") as error:
            await store.delete_network(n.id)
        assert error.value.sqlite_errorname == "SQLITE_CONSTRAINT_FOREIGNKEY"
        assert await store.networks() == [n]
        store.delete_container(c.id)
        await store.delete_network(n.id)  # its container gone, the address went with it
        assert await store.networks() == []

    async def test_attachments_come_by_container_then_position_and_ports_round_trip(
            self, store: StateStore) -> None:
        front, back = network("front", 1), network("back", 2)
        web, db = container("web"), container("db")
        for n in (front, back):
            store.insert_network(n)
        ports = [PortMapping("tcp", "", 8080, 80), PortMapping("udp", "127.0.0.1", 53, 53)]
        for c in (web, db):
            store.insert_container(c)
        store.insert_attachments(web.id, [attachment(web, back, 1), attachment(web, front, 0)], ports)
        await store.insert_attachments(db.id, [attachment(db, front, 0, host=11)], [])
        assert await store.attachments() == sorted(
            [attachment(web, back, 1), attachment(web, front, 0), attachment(db, front, 0, host=11)],
            key=lambda a: (a.container_id, a.position))
        assert sorted(await store.ports()) == sorted((web.id, p) for p in ports)

    async def test_an_address_of_an_unknown_container_is_refused(self, store: StateStore) -> None:
        n = network()
        store.insert_network(n)
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY constraint failed"):
            await store.insert_attachments("0" * 64, [attachment(container(), n)], [])
        assert await store.attachments() == []

    async def test_a_taken_address_or_host_port_is_refused(self, store: StateStore) -> None:
        n, web, db = network(), container("web"), container("db")
        store.insert_network(n)
        store.insert_container(web)
        store.insert_container(db)
        store.insert_attachments(web.id, [attachment(web, n)], [PortMapping("tcp", "", 8080, 80)])
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE constraint failed: network_addresses"):
            await store.insert_attachments(db.id, [attachment(db, n)], [])
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE constraint failed: published_ports"):
            await store.insert_attachments(db.id, [], [PortMapping("tcp", "", 8080, 81)])
        assert await store.attachments() == [attachment(web, n)]
        assert await store.ports() == [(web.id, PortMapping("tcp", "", 8080, 80))]

    # --- volumes ---------------------------------------------------------------------------------

    async def test_volumes_round_trip_come_oldest_first_and_are_deleted(self, store: StateStore) -> None:
        newer = Volume(id="2" * 64, name="cache", mountpoint="/v/cache/_data", created_at=20, labels={"a": "b"},
                       owner_uid=1000)
        older = Volume(id="1" * 64, name="data", mountpoint="/v/data/_data", created_at=10)
        store.insert_volume(newer)
        await store.insert_volume(older)
        assert await store.volumes() == [older, newer]
        await store.delete_volume(older.id)
        assert await store.volumes() == [newer]

    async def test_a_taken_volume_name_is_refused(self, store: StateStore) -> None:
        v = Volume(id="1" * 64, name="data", mountpoint="/v/data/_data", created_at=10)
        store.insert_volume(v)
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE constraint failed: volumes.name"):
            await store.insert_volume(dataclasses.replace(v, id="2" * 64))
        assert await store.volumes() == [v]

    # --- events ----------------------------------------------------------------------------------

    async def test_events_round_trip_in_the_order_added_and_filter_by_time(self, store: StateStore) -> None:
        store.add_event("created", "a", {"name": "web", "n": [1, 2]}, time=100)
        store.add_event("started", "a", time=300)
        store.add_event("exited", "a", {"exit_code": 0}, time=200)  # told late: still after the others
        await store.flush()
        assert await store.events() == [(100, "created", "a", {"name": "web", "n": [1, 2]}),
                                        (300, "started", "a", {}), (200, "exited", "a", {"exit_code": 0})]
        assert [e[1] for e in await store.events(since_usec=200)] == ["started", "exited"]
        assert await store.events(since_usec=301) == []

    async def test_an_event_without_a_time_is_stamped_now(self, store: StateStore) -> None:
        before = now_usec()
        await store.add_event("created", "a")
        ((at, _, _, _),) = await store.events()
        assert before <= at <= now_usec()

    async def test_events_are_bounded_and_the_oldest_go_first(self, store: StateStore,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(store_module, "MAX_EVENTS", 5)
        for i in range(8):
            store.add_event("created", str(i), time=1000 + i)
        await store.flush()
        assert [e[2] for e in await store.events()] == ["3", "4", "5", "6", "7"]

    # --- the ordered writes ----------------------------------------------------------------------

    async def test_writes_land_in_the_order_asked(self, store: StateStore) -> None:
        c = container()
        store.insert_container(c)
        store.update_status(c.with_(state=State.RUNNING, main_pid=5))  # nothing awaited: it needs the row first
        store.update_status(c.with_(state=State.EXITED, exit_code=0))
        removed = container("removed")
        store.insert_container(removed)
        store.delete_container(removed.id)
        await store.flush()
        assert await store.containers() == [c.with_(state=State.EXITED, exit_code=0)]

    async def test_flush_waits_for_every_queued_write(self, store: StateStore) -> None:
        futures = [store.insert_container(container(f"c{i}", created_at=i)) for i in range(20)]
        futures.append(store.add_event("created", "c0", time=1))
        await store.flush()
        assert all(f.done() for f in futures)
        assert len(await store.containers()) == 20

    async def test_flush_with_nothing_queued_returns(self, store: StateStore) -> None:
        await asyncio.wait_for(store.flush(), 5)

    async def test_a_write_whose_future_is_not_awaited_still_lands(self, store: StateStore) -> None:
        store.insert_container(container("web"))
        await store.add_event("created", "web", time=1)  # queued behind the first, awaited alone
        assert [c.name for c in await store.containers()] == ["web"]
