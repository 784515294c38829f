"""ps's filters, --last and --latest, the fields --format reads, and how quiltctl words times, as Podman does."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest
from click.testing import CliRunner, Result

from quilt_agent.cli import items, listing
from quilt_agent.cli.context import CliState
from quilt_agent.cli.listing import ListingError
from quilt_agent.cli.main import cli
from quilt_agent.cli.output import ago
from tests.unit.cli.fake_agent import NOW, ROWS, SEC, FakeAgent, container

def names(rows: list[dict[str, Any]]) -> list[str]:
    return [r["Name"] for r in rows]


def pick(*specs: str, show_all: bool = True, last: int | None = None, latest: bool = False) -> list[str]:
    return names(listing.select(ROWS, show_all, listing.parse_filters(specs), last, latest))


# --- times ---


@pytest.mark.parametrize(("seconds", "words"), [
    (0, "Less than a second"), (1, "1 second"), (59, "59 seconds"), (60, "About a minute"),
    (119, "About a minute"), (120, "2 minutes"), (3599, "59 minutes"), (3600, "About an hour"),
    (5399, "About an hour"), (5400, "2 hours"), (47 * 3600, "47 hours"), (48 * 3600, "2 days"),
    (13 * 86400, "13 days"), (14 * 86400, "2 weeks"), (59 * 86400, "8 weeks"), (60 * 86400, "2 months"),
    (729 * 86400, "24 months"), (730 * 86400, "2 years"),
])
def test_durations_are_worded_as_podman_words_them(seconds: float, words: str) -> None:
    assert listing.human_duration(seconds) == words


def test_ago_says_one_second_not_one_seconds() -> None:
    assert ago(int((NOW - 1) * SEC), NOW) == "1 second ago"
    assert ago(int((NOW - 75) * SEC), NOW) == "About a minute ago"
    assert ago(int((NOW - 7200) * SEC), NOW) == "2 hours ago"
    assert ago(0, NOW) == ""


def test_times_are_rfc3339_and_zero_is_gos_zero_time() -> None:
    text = listing.rfc3339(1_700_000_000_123_456)
    assert datetime.fromisoformat(text).timestamp() == 1_700_000_000.123456
    assert listing.rfc3339(0) == "0001-01-01T00:00:00Z"


def test_go_time_drops_trailing_zeros_of_the_fraction() -> None:
    text = listing.go_time(1_700_000_000_120_000)
    assert text.split()[1].endswith(".12") and len(text.split()) == 4
    assert listing.go_time(1_700_000_000_000_000).split()[1].count(".") == 0


def test_dated_turns_the_times_into_dates_and_leaves_durations() -> None:
    props = {**ROWS[0], "HealthInterval": 30 * SEC, "RestartAt": 0,
             "HealthLog": {"Status": "healthy", "FailingStreak": 0,
                           "Log": [{"Start": 5 * SEC, "End": 6 * SEC, "ExitCode": 0, "Output": ""}]}}
    out = listing.dated(props)
    assert out["CreatedAt"] == listing.rfc3339(ROWS[0]["CreatedAt"]) and out["RestartAt"] == "0001-01-01T00:00:00Z"
    assert out["FinishedAt"] == "0001-01-01T00:00:00Z" and out["HealthInterval"] == 30 * SEC
    assert out["HealthLog"]["Log"][0]["Start"] == listing.rfc3339(5 * SEC)
    assert props["CreatedAt"] == ROWS[0]["CreatedAt"]  # the input is left alone


def test_dates_of_one_zone_sort_as_the_times_do() -> None:
    props = listing.dated(ROWS[2])
    assert props["CreatedAt"] <= props["StartedAt"] <= props["FinishedAt"]


# --- filters, --last, --latest ---


def test_without_all_only_running_ones_in_the_order_they_were_created() -> None:
    shuffled = [ROWS[1], ROWS[4], ROWS[0], ROWS[3], ROWS[2]]
    assert names(listing.select(shuffled, False, {})) == ["web", "db"]
    assert names(listing.select(shuffled, True, {})) == ["web", "db", "old", "broken", "new"]


def test_name_is_a_regular_expression_found_anywhere() -> None:
    assert pick("name=^w") == ["web"]
    assert pick("name=o") == ["old", "broken"]
    assert pick("name=^eb") == []


def test_id_is_a_prefix() -> None:
    web_id = ROWS[0]["Id"]
    assert pick(f"id={web_id[:5]}") == ["web"]
    assert pick(f"id={web_id[1:6]}") == []


def test_several_values_of_one_key_are_or_ed_and_keys_are_and_ed() -> None:
    assert pick("name=web", "name=db") == ["web", "db"]
    assert pick("name=web", "name=db", "label=tier") == ["web"]


def test_label_filters_are_and_ed_as_podman_documents() -> None:
    assert pick("label=app") == ["web", "db"]
    assert pick("label=app=shop", "label=tier=front") == ["web"]
    assert pick("label=app=other") == []
    assert pick("label!=tier") == ["db", "old", "broken", "new"]


def test_status_shows_every_state_without_all_and_exited_covers_failed() -> None:
    assert pick("status=exited", show_all=False) == ["old", "broken"]
    assert pick("status=failed", show_all=False) == ["broken"]
    assert pick("status=created", show_all=False) == ["new"]
    assert pick("status=running", "status=created", show_all=False) == ["web", "db", "new"]


def test_ancestor_matches_the_image_by_name_regex_or_id() -> None:
    assert pick("ancestor=alpine") == ["web", "db", "old"]
    assert pick("ancestor=docker.io/library/alpine") == ["web", "db", "old"]
    assert pick("ancestor=busybox") == ["broken"]
    assert pick("ancestor=aaaaaaaa") == ["new"]


def test_exited_health_and_network() -> None:
    assert pick("exited=3") == ["old"]
    assert pick("exited=127", "exited=3") == ["old", "broken"]
    rows = [container("a", Health="healthy"), container("b", Networks=["back"])]
    assert names(listing.select(rows, True, listing.parse_filters(["health=healthy"]))) == ["a"]
    assert names(listing.select(rows, True, listing.parse_filters(["health=none"]))) == ["b"]
    assert names(listing.select(rows, True, listing.parse_filters(["network=back"]))) == ["b"]


def test_name_ignores_the_slash_of_dockers_names() -> None:
    assert pick("name=/web") == ["web"]


def test_before_and_since_compare_with_the_named_containers_creation() -> None:
    assert pick("since=old") == ["broken", "new"]
    assert pick("before=old") == ["web", "db"]
    assert pick(f"before={ROWS[1]['Id'][:8]}") == ["web"]
    assert pick("since=db", "before=new") == ["old", "broken"]
    assert pick("since=web", show_all=False) == ["db"]  # only running ones still, though old is fetched too
    assert listing.fetches_all(False, {"since": ["old"]}, None, False)
    assert not listing.shows_all(False, {"since": ["old"]}, None, False)


def test_before_of_no_container_is_refused() -> None:
    with pytest.raises(ListingError, match="invalid filter 'before=nobody': no container 'nobody'"):
        pick("before=nobody")


def test_volume_restart_policy_and_command() -> None:
    rows = [container("a", Volumes=["data:/srv", "/host:/etc/x:ro"], RestartPolicy="always"),
            container("b", Tmpfs=["/srv"], Command=["/usr/bin/python3", "app.py"])]
    found = lambda *specs: names(listing.select(rows, True, listing.parse_filters(specs)))  # noqa: E731
    assert found("volume=data") == found("volume=/srv") == found("volume=data:/srv") == ["a"]
    assert found("volume=/host:/etc/x") == ["a"] and found("volume=data:/other") == []
    assert found("restart-policy=always") == ["a"] and found("restart-policy=none") == ["b"]
    assert found("command=python") == ["b"]


def test_last_is_the_newest_n_in_any_state_and_latest_the_newest() -> None:
    assert pick(show_all=False, last=2) == ["broken", "new"]
    assert pick(show_all=False, last=0) == ["web", "db"]  # as Podman: 0 is no limit, and only running ones
    assert pick(show_all=False, latest=True) == ["new"]
    assert pick("status=running", latest=True) == ["db"]  # filtered first, then the newest


def test_last_and_latest_together_are_refused() -> None:
    with pytest.raises(ListingError, match="--last and --latest"):
        listing.select(ROWS, True, {}, 1, True)


def test_rows_without_properties_beyond_the_id_still_pass() -> None:
    assert listing.select([{"Id": "x"}], False, {}) == [{"Id": "x"}]


@pytest.mark.parametrize(("spec", "says"), [
    ("name", "expected KEY=VALUE"),
    ("colour=red", "'colour' is not one of ancestor, before, command"),
    ("restart-policy=sometimes", "the restart policy is one of no, none"),
    ("since=", "expected since=CONTAINER"),
    ("volume=", "expected volume=NAME"),
    ("command=[", "the command is a regular expression"),
    ("name=(", "the name is a regular expression"),
    ("status=sleeping", "the status is one of created, running"),
    ("health=meh", "the health is one of"),
    ("exited=x", "the exit code is a number"),
    ("exited=--3", "the exit code is a number"),
    ("exited=", "the exit code is a number"),
    ("label==v", "expected label=KEY or label=KEY=VALUE"),
])
def test_bad_filters_are_refused_with_the_filter_named(spec: str, says: str) -> None:
    with pytest.raises(ListingError) as raised:
        listing.parse_filters([spec])
    assert f"invalid filter '{spec}'" in str(raised.value) and says in str(raised.value)


# --- what --format reads ---


class _Reads(dict):
    """A container's properties that remember which were read."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)


def test_ps_without_a_template_reads_only_the_properties_it_asks_for(capsys: pytest.CaptureFixture[str]) -> None:
    from quilt_agent.cli import output

    rows = [_Reads(r, Health="healthy" if r["State"] == "running" else "", Volumes=["/v:/w"], Tmpfs=["/t"],
                   RestartCount=0, RestartPolicy="no") for r in ROWS]
    rows[2]["Restarting"] = True
    every_filter = ["name=w", "id=77", "status=exited", "status=paused", "status=restarting", "label=app",
                    "label!=tier=x", "ancestor=alpine", "exited=3", "health=healthy", "network=quilt",
                    "volume=/v", "before=new", "since=web", "restart-policy=no", "command=sleep"]
    for spec in every_filter:
        listing.select(rows, True, listing.parse_filters([spec]))
    listing.select(rows, False, {}, last=2)
    output.print_ps_table(rows, NOW)
    output.print_ps_table(rows, NOW, no_trunc=True)
    for props in rows:
        str(props["Id"])  # -q
    read = set().union(*(r.read for r in rows))
    assert read and read <= set(listing.TABLE_PROPERTIES), read - set(listing.TABLE_PROPERTIES)
    capsys.readouterr()


def test_ps_asks_only_for_properties_the_agent_has() -> None:
    from quilt_agent.bus.container import property_names

    assert property_names(list(listing.TABLE_PROPERTIES)) == listing.TABLE_PROPERTIES


def test_ps_items_have_podmans_fields() -> None:
    props = container("web", Ports=["8080:80/tcp", "127.0.0.1:5353:53/udp"], Labels={"a": "b"}, MainPID=7,
                      Command=["/bin/sh", "-c", "sleep 600 && echo done"], Health="healthy")
    item = items.ps_item(props, NOW)
    assert item["ID"] == props["Id"][:12] and item["Names"] == "web" and item["Pid"] == 7
    assert item["Command"] == "/bin/sh -c sleep ..."  # Podman's 17 characters
    assert item["Ports"] == "0.0.0.0:8080->80/tcp, 127.0.0.1:5353->53/udp"
    assert item["Status"] == "Up 2 minutes (healthy)" and item["State"] == "running"
    assert item["RunningFor"] == item["CreatedHuman"] == "About an hour ago"
    assert item["Networks"] == "quilt" and item["Labels"] == {"a": "b"}
    assert item["StartedAt"] == int(NOW - 120) and item["MainPID"] == 7  # Quilt's own names too
    full = items.ps_item(props, NOW, no_trunc=True)
    assert full["ID"] == props["Id"] and full["Command"] == "/bin/sh -c sleep 600 && echo done"


def test_ps_status_words_each_state_as_podman_does() -> None:
    assert items.ps_status(container("a", "exited", ExitCode=3), NOW) == "Exited (3) 5 seconds ago"
    assert items.ps_status(container("a", "failed", ExitCode=127), NOW) == "Exited (127) 5 seconds ago"
    assert items.ps_status(container("a", "created"), NOW) == "Created"
    assert items.ps_item(container("a", "failed"), NOW)["State"] == "exited"


def test_inspect_items_have_podmans_shape() -> None:
    props = container("web", MainPID=9, Environment=["A=1"], MemoryMax=64 << 20, CPUQuota=50.0,
                      RestartPolicy="on-failure", RestartMax=3, Addresses=[["quilt", "10.89.0.2"]],
                      NetworkAliases=["www"], Volumes=["/srv:/data:ro", "cache:/cache"], Tmpfs=["/tmp:size=1m"],
                      Ports=["8080:80/tcp"], StopSignal=2, WorkingDirectory="/", Hostname="web", User="")
    item = items.inspect_item(props)
    assert (item["State"]["Status"], item["State"]["Running"], item["State"]["Pid"]) == ("running", True, 9)
    assert item["State"]["FinishedAt"] == "0001-01-01T00:00:00Z" and item["Name"] == "web"
    assert item["Config"]["Env"] == ["A=1"] and item["Config"]["StopSignal"] == "SIGINT"
    assert item["Config"]["Cmd"] == ["sleep", "600"] and (item["Path"], item["Args"]) == ("sleep", ["600"])
    assert item["HostConfig"]["Memory"] == 64 << 20 and item["HostConfig"]["CpuQuota"] == 50_000
    assert item["HostConfig"]["RestartPolicy"]["Name"] == "on-failure"
    assert item["HostConfig"]["LogConfig"] == {"Type": "journald", "Config": None, "Path": "", "Size": "0"}
    logged = items.inspect_item({**props, "LogDriver": "k8s-file", "LogMaxSize": 4096, "LogMaxFiles": 2})
    assert logged["HostConfig"]["LogConfig"] == {
        "Type": "k8s-file", "Config": {"max-size": "4096", "max-files": "2"},
        "Path": f"/var/lib/quilt/containers/{props['Id']}/ctr.log", "Size": "4096"}
    assert item["NetworkSettings"]["Networks"]["quilt"]["IPAddress"] == "10.89.0.2"
    assert item["NetworkSettings"]["Ports"] == {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}
    assert [(m["Type"], m["Source"], m["Destination"], m["RW"]) for m in item["Mounts"]] == [
        ("bind", "/srv", "/data", False), ("volume", "cache", "/cache", True), ("tmpfs", "tmpfs", "/tmp", True)]
    assert item["MainPID"] == 9  # Quilt's own names too
    assert item["State"]["Health"]["Status"] == "" and item["State"]["Health"]["Log"] == []  # no health check
    assert item["CreatedAt"] == listing.rfc3339(props["CreatedAt"])


def test_inspect_items_carry_the_health_log_with_dates() -> None:
    props = container("web", Health="healthy", HealthCommand=["true"], HealthInterval=30 * SEC,
                      HealthLog={"Status": "healthy", "FailingStreak": 0,
                                 "Log": [{"Start": 5 * SEC, "End": 6 * SEC, "ExitCode": 0, "Output": ""}]})
    health = items.inspect_item(props)["State"]["Health"]
    assert health["Status"] == "healthy" and health["Log"][0]["End"] == listing.rfc3339(6 * SEC)
    assert items.inspect_item(props)["Config"]["Healthcheck"]["Interval"] == 30_000_000_000  # Go's nanoseconds


def test_image_items_are_one_per_name_split_into_repository_and_tag() -> None:
    props = {"Id": "c" * 64, "Names": ["docker.io/library/alpine:3.19", "localhost:5000/app"], "Size": 5_590_000,
             "CreatedAt": int((NOW - 86400 * 3) * SEC), "Digest": "sha256:x",
             "Config": json.dumps({"config": {"Labels": {"v": "1"}}})}
    first, second = items.image_items(props, NOW)
    assert (first["Repository"], first["Tag"], first["ID"]) == ("docker.io/library/alpine", "3.19", "c" * 12)
    assert (second["Repository"], second["Tag"]) == ("localhost:5000/app", "<none>")
    assert first["Size"] == "5.59 MB" and first["Created"] == "3 days ago" and first["Labels"] == {"v": "1"}
    (unnamed,) = items.image_items({**props, "Names": []}, NOW)
    assert (unnamed["Repository"], unnamed["Tag"], unnamed["Dangling"]) == ("<none>", "<none>", True)


def test_network_and_volume_items() -> None:
    net = items.network_item({"Id": "n" * 64, "Name": "quilt", "Subnet": "10.89.0.0/24", "Gateway": "10.89.0.1",
                                "Bridge": "quilt0", "Internal": False, "DNS": True, "Containers": []})
    assert (net["ID"], net["Driver"], net["DNSEnabled"], net["Subnet"]) == ("n" * 12, "bridge", True, "10.89.0.0/24")
    vol = items.volume_item({"Name": "data", "Mountpoint": "/var/lib/x", "CreatedAt": 0, "Labels": {},
                               "UsedBy": ["web"]})
    assert (vol["Name"], vol["Driver"], vol["UsedBy"]) == ("data", "local", ["web"])


# --- the verbs, against a fake agent ---


def quiltctl(*args: str, rows: list[dict[str, Any]] = ROWS) -> tuple[Result, FakeAgent]:
    agent = FakeAgent(rows)
    return CliRunner().invoke(cli, list(args), obj=CliState(client_factory=lambda: agent)), agent


def test_ps_format_prints_each_container_through_the_template() -> None:
    result, _ = quiltctl("ps", "-a", "--format", "{{.Names}} {{.State}}")
    assert (result.exit_code, result.output) == (0, "web running\ndb running\nold exited\nbroken exited\n"
                                                    "new created\n")


def test_ps_format_table_has_podmans_headers() -> None:
    result, _ = quiltctl("ps", "--format", "table {{.ID}} {{.Names}} {{.RunningFor}}")
    lines = result.output.splitlines()
    assert lines[0].split("  ")[0] == "CONTAINER ID" and "NAMES" in lines[0] and "RUNNING FOR" in lines[0]
    assert len(lines) == 3
    assert quiltctl("ps", "--noheading", "--format", "table {{.Names}}")[0].output == "web\ndb\n"


def test_ps_filter_last_and_quiet() -> None:
    result, _ = quiltctl("ps", "-f", "name=^(web|old)$", "--format", "{{.Names}}", "-a")
    assert result.output == "web\nold\n"
    assert quiltctl("ps", "-n", "2", "--format", "{{.Names}}")[0].output == "broken\nnew\n"
    assert quiltctl("ps", "--latest", "-q")[0].output == ROWS[4]["Id"][:12] + "\n"
    assert quiltctl("ps", "--latest", "-q", "--no-trunc")[0].output == ROWS[4]["Id"] + "\n"
    assert quiltctl("ps", "--filter", "status=exited", "-q")[0].output.split() == [ROWS[2]["Id"][:12],
                                                                                   ROWS[3]["Id"][:12]]


def test_ps_format_json_is_the_json_list_with_dates() -> None:
    result, _ = quiltctl("ps", "--format", "json")
    shown = json.loads(result.output)
    assert [p["Name"] for p in shown] == ["web", "db"] and shown[0]["CreatedAt"] == listing.rfc3339(
        ROWS[0]["CreatedAt"])
    assert json.loads(quiltctl("ps", "--format", "{{json .}}")[0].output) == shown


@pytest.mark.parametrize(("args", "says"), [
    (("ps", "--format", "{{if .ID}}x{{end}}"), "quiltctl: --format: '{{if .ID}}': 'if' is not supported"),
    (("ps", "--format", "{{.Size}}"), "quiltctl: --format: no field .Size in a container: Quilt does not measure"),
    (("ps", "--format", "{{.Nope}}"), "quiltctl: --format: no field .Nope in a container (its fields: .AutoRemove"),
    (("ps", "--filter", "colour=red"), "quiltctl: invalid filter 'colour=red'"),
    (("ps", "--last", "1", "--latest"), "quiltctl: --last and --latest cannot be used together"),
    (("inspect", "--format", "{{.State.Nope}}", "web"), "quiltctl: --format: no field .State.Nope in a state"),
    (("inspect", "--format", "{{.Pod}}", "web"), "quiltctl: --format: no field .Pod in a container: Quilt has no"),
])
def test_bad_formats_and_filters_are_one_line_and_125(args: tuple[str, ...], says: str) -> None:
    result, _ = quiltctl(*args)
    assert result.exit_code == 125, result.output
    assert result.stderr.startswith(says) and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stdout == ""


def test_with_no_containers_a_field_quilt_lacks_is_still_refused() -> None:
    result, _ = quiltctl("ps", "--format", "{{.ID}} {{.Size}}", rows=[])
    assert result.exit_code == 125 and "no field .Size in a container" in result.stderr
    for fine in ("{{.Unit}} {{.Names}}", "table {{.ID}} {{index .Labels \"a\"}}", "{{range .}}{{.ID}}{{end}}"):
        result, _ = quiltctl("ps", "--format", fine, rows=[])
        assert result.exit_code == 0 and result.stderr == "", (fine, result.stderr)


def test_ps_before_of_no_container_is_one_line_and_125() -> None:
    result, _ = quiltctl("ps", "--filter", "before=nobody")
    assert (result.exit_code, result.stderr) == (125, "quiltctl: invalid filter 'before=nobody': no container "
                                                       "'nobody'\n")


def test_a_bad_template_is_refused_before_the_agent_is_asked() -> None:
    result, agent = quiltctl("ps", "--format", "{{printf .ID}}")
    assert result.exit_code == 125 and agent.calls == []


def test_inspect_format_reads_podmans_inspect_shape() -> None:
    result, _ = quiltctl("inspect", "--format", "{{.Name}} {{.State.Status}} {{.State.Running}} {{.Config.Env}}",
                         "web", "old")
    assert result.output == "web running true [A=1]\nold exited false [A=1]\n"
    assert quiltctl("inspect", "-f", "{{.State.ExitCode}}", "broken")[0].output == "127\n"


def test_inspect_without_format_prints_the_properties_with_dates() -> None:
    result, _ = quiltctl("inspect", "old")
    (props,) = json.loads(result.output)
    assert props["State"] == "exited" and props["Environment"] == ["A=1"]
    assert props["CreatedAt"] == listing.rfc3339(ROWS[2]["CreatedAt"])
    assert props["FinishedAt"] == listing.rfc3339(ROWS[2]["FinishedAt"])
    assert json.loads(quiltctl("inspect", "--format", "json", "old")[0].output) == [props]


def test_tables_are_plain_text_when_piped_even_without_no_color() -> None:
    result, _ = quiltctl("ps")
    assert "\x1b[" not in result.output


def test_tables_have_no_colour_on_a_terminal_with_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    from quilt_agent.cli import output

    monkeypatch.setattr("sys.stdout.isatty", lambda: True, raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    assert not output.colour()
    monkeypatch.delenv("NO_COLOR")
    assert output.colour()
