"""quilt-generator (quilt_agent/generator.py) end to end into a directory, as systemd runs it: the services, the
[Install] links, a bad file's failing service and its logged line, masked files, and exit status 0 whatever
happens."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import systemd

from quilt_agent import generator, unitfiles

Logged = list[tuple[str, dict[str, str]]]


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


@pytest.fixture
def units(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The one unit directory, through QUILT_UNIT_DIRS."""
    directory = tmp_path / "units"
    directory.mkdir()
    monkeypatch.setenv("QUILT_UNIT_DIRS", str(directory))
    return directory


@pytest.fixture
def out(tmp_path: Path) -> Path:
    for name in ("normal", "early", "late"):
        (tmp_path / name).mkdir()
    return tmp_path / "normal"


def run(out: Path) -> tuple[int, Logged]:
    logged: Logged = []
    code = generator.run([str(out), str(out.parent / "early"), str(out.parent / "late")],
                         log=lambda message, fields: logged.append((message, dict(fields))))
    return code, logged


def tree(directory: Path) -> dict[str, str]:
    """Every file and link below directory: a file's text, a link's target as 'LINK target'."""
    found = {}
    for root, dirs, files in os.walk(directory):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            path = os.path.join(root, name)
            key = os.path.relpath(path, directory)
            found[key] = f"LINK {os.readlink(path)}" if os.path.islink(path) else Path(path).read_text()
    return found


def test_each_file_becomes_its_service_and_install_makes_the_links(units: Path, out: Path) -> None:
    write(units, "web.container", "[Container]\nImage=busybox\nNetwork=db.network\nVolume=data.volume:/d\n"
                                  "[Install]\nWantedBy=multi-user.target default.target\nRequiredBy=app.target\n"
                                  "Alias=www.service\n")
    write(units, "db.network", "[Network]\nNetworkName=backend\n[Install]\nUpheldBy=app.target\n")
    write(units, "data.volume", "[Volume]\n")
    code, logged = run(out)
    assert (code, logged) == (0, [])
    files = tree(out)
    assert files.keys() == {"web.service", "db-network.service", "data-volume.service",
                            "multi-user.target.wants/web.service", "default.target.wants/web.service",
                            "app.target.requires/web.service", "app.target.upholds/db-network.service",
                            "www.service"}
    assert files["multi-user.target.wants/web.service"] == "LINK ../web.service"
    assert files["app.target.upholds/db-network.service"] == "LINK ../db-network.service"
    assert files["www.service"] == "LINK web.service"
    web = unitfiles.parse_container(unitfiles.read_file(str(units / "web.container")),
                                    {"db.network": "backend", "data.volume": "data"})
    assert files["web.service"] == unitfiles.service_text(web)
    assert "ExecStart=/usr/bin/quiltctl unit-run " + str(units / "db.network") in files["db-network.service"]


def test_a_bad_file_gets_a_failing_service_and_a_logged_line(units: Path, out: Path) -> None:
    bad = write(units, "bad.container", "[Container]\nImage=busybox\nMemory=lots\n[Install]\n"
                                        "WantedBy=multi-user.target\n")
    write(units, "good.container", "[Container]\nImage=busybox\n")
    code, logged = run(out)
    assert code == 0
    assert logged == [(f"{bad}:3: Memory: 'lots' is not a size (a number with an optional K, M, G or T: 512M, 2G);"
                       " bad.service fails when started",
                       {"FILE": str(bad), "SERVICE": "bad.service", "LINE": "3", "KEY": "Memory"})]
    files = tree(out)
    assert files["bad.service"] == unitfiles.failing_service_text(str(bad), unitfiles.UnitFileError(
        str(bad), 3, "Memory", "'lots' is not a size (a number with an optional K, M, G or T: 512M, 2G)"))
    assert f"ExecStart=/usr/bin/quiltctl unit-check {bad}\n" in files["bad.service"]
    # Started where the good one would have been, so that it is seen failing at boot.
    assert files["multi-user.target.wants/bad.service"] == "LINK ../bad.service"
    assert "Type=notify" in files["good.service"]


def test_a_file_whose_syntax_is_bad_fails_too(units: Path, out: Path) -> None:
    write(units, "web.container", "Image=before-any-section\n")
    code, logged = run(out)
    assert code == 0 and logged[0][1] == {"FILE": str(units / "web.container"), "SERVICE": "web.service",
                                          "LINE": "1", "KEY": "Image"}
    assert "Type=oneshot" in (out / "web.service").read_text()


def test_a_reference_to_a_bad_file_still_finds_its_name(units: Path, out: Path) -> None:
    write(units, "db.network", "[Network]\nNetworkName=backend\nBogus=1\n")
    write(units, "web.container", "[Container]\nImage=x\nNetwork=db.network\n")
    code, logged = run(out)
    assert code == 0 and [fields["SERVICE"] for _, fields in logged] == ["db-network.service"]
    assert "Requires=db-network.service" in (out / "web.service").read_text()


def test_masked_and_unnamable_files_make_no_service(tmp_path: Path, out: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    etc, usr = tmp_path / "etc", tmp_path / "usr"
    write(usr, "web.container", "[Container]\nImage=x\n")
    write(usr, "db.network", "[Network]\n")
    write(usr, "kept.volume", "[Volume]\n")
    write(etc, "web.container", "")
    (etc / "db.network").symlink_to("/dev/null")
    write(etc, "my web.container", "[Container]\nImage=x\n")
    monkeypatch.setenv("QUILT_UNIT_DIRS", f"{etc}:{usr}")
    code, logged = run(out)
    assert code == 0 and set(tree(out)) == {"kept-volume.service"}
    assert [(m.split(": ", 1)[1], f) for m, f in logged] == [
        ("no service can be named after it (use letters, digits, ':', '_', '.' and '-'): left out",
         {"FILE": str(etc / "my web.container")})]


def test_a_fault_of_the_generators_own_still_makes_a_failing_service(units: Path, out: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    write(units, "web.container", "[Container]\nImage=x\n")

    def broken(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(unitfiles, "convert", broken)
    code, logged = run(out)
    assert code == 0 and "quilt-generator failed on it: RuntimeError: boom" in logged[0][0]
    assert "(invalid: quilt-generator failed on it: RuntimeError: boom)" in (out / "web.service").read_text()


def test_an_output_directory_it_cannot_write_is_logged_not_fatal(units: Path, tmp_path: Path) -> None:
    write(units, "web.container", "[Container]\nImage=x\n")
    logged: Logged = []
    code = generator.run([str(tmp_path / "missing")], log=lambda message, fields: logged.append((message, fields)))
    assert code == 0 and "cannot write web.service" in logged[0][0]


def test_a_bad_install_name_is_logged_and_left_out(units: Path, out: Path) -> None:
    write(units, "web.container", "[Container]\nImage=x\n[Install]\nWantedBy=../../etc good.target\n"
                                  "Alias=web.socket\n")
    code, logged = run(out)
    assert code == 0 and set(tree(out)) == {"web.service", "good.target.wants/web.service"}
    assert [f["KEY"] for _, f in logged] == ["WantedBy", "Alias"]


def test_as_systemd_runs_it_a_subprocess_that_exits_0(units: Path, out: Path, tmp_path: Path) -> None:
    write(units, "web.container", "[Container]\nImage=x\n[Install]\nWantedBy=multi-user.target\n")
    write(units, "bad.container", "[Container]\nFrobnicate=1\n")
    env = {**os.environ, "QUILT_UNIT_DIRS": str(units)}
    done = subprocess.run([sys.executable, "-m", "quilt_agent.generator", str(out), str(tmp_path / "early"),
                           str(tmp_path / "late")], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert set(tree(out)) == {"web.service", "bad.service", "multi-user.target.wants/web.service"}
    nowhere = subprocess.run([sys.executable, "-m", "quilt_agent.generator", str(tmp_path / "missing"), "x", "y"],
                             env=env, capture_output=True, text=True, timeout=60)
    assert nowhere.returncode == 0


def test_dryrun_prints_the_services(units: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(units, "web.container", "[Container]\nImage=x\n[Install]\nWantedBy=multi-user.target\n")
    assert generator.run(["--dryrun"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("---web.service---\n# Generated by quilt-generator from ")
    assert "# multi-user.target.wants/web.service\n" in printed


def test_a_command_line_that_is_not_systemds_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert generator.run([]) == 2 and "usage: quilt-generator" in capsys.readouterr().err


def test_without_a_journal_the_line_goes_to_stderr(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.setattr(generator, "JOURNAL_SOCKET", str(tmp_path / "no-socket"))
    generator.journal_log("/x/web.container:3: Memory: bad", {"FILE": "/x/web.container"})
    assert capsys.readouterr().err == "quilt-generator: /x/web.container:3: Memory: bad\n"


def test_with_a_journal_the_line_carries_the_files_fields(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sent: list[tuple[str, dict[str, str]]] = []

    class Journal:
        @staticmethod
        def send(message: str, **fields: str) -> None:
            sent.append((message, fields))

    socket = tmp_path / "socket"
    socket.touch()
    monkeypatch.setattr(generator, "JOURNAL_SOCKET", str(socket))
    monkeypatch.setattr(systemd, "journal", Journal, raising=False)
    monkeypatch.setitem(sys.modules, "systemd.journal", Journal)
    generator.journal_log("bad", {"FILE": "/x/web.container", "LINE": "3", "KEY": "Memory",
                                  "SERVICE": "web.service"})
    assert sent == [("bad", {"PRIORITY": "3", "SYSLOG_IDENTIFIER": "quilt-generator",
                             "QUILT_UNIT_FILE": "/x/web.container", "QUILT_UNIT_LINE": "3",
                             "QUILT_UNIT_KEY": "Memory", "OBJECT_SYSTEMD_UNIT": "web.service"})]
