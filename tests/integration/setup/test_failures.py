"""A failing setup step: the container is failed with the step and its exit code as the reason, Wait returns that
code, the later steps and the main command never run, and nothing is cached."""
from __future__ import annotations

from pathlib import Path

from quilt_agent.client import Client
from tests import packageindex as pkg
from tests.integration.setup.conftest import SetupImage, headers, no_path, requests, run

MAIN = "touch /main-ran; echo main-ran"


async def test_a_failing_sh_step_stops_the_list_and_the_command(sclient: Client, name: str, busybox: str,
                                                                tmp_path: Path) -> None:
    images = {e.id for e in await sclient.list_images()}
    out = await run(sclient, name, busybox, MAIN,
                    ["sh: echo first > /first", "sh: echo about to fail; exit 3", "sh: touch /third"],
                    expect_main=False)
    assert out.exit_code == 3
    assert out.props["State"] == "failed"
    assert out.props["FailureReason"] == "setup step 2 (sh: echo about to fail; exit 3) exited with code 3"
    assert out.props["ExitCode"] == 3
    assert await sclient.wait(out.path) == 3  # again, once it has ended
    assert "main-ran" not in out.stdout
    assert headers(out.setup) == ["quilt: setup step 1/3: sh: echo first > /first",
                                  "quilt: setup step 2/3: sh: echo about to fail; exit 3"], out.setup
    assert "about to fail" in out.setup
    await sclient.copy_from(out.path, "/first", str(tmp_path / "first"))  # step 1 ran
    assert (tmp_path / "first").read_text() == "first\n"
    await no_path(sclient, out.path, "/third", tmp_path)
    await no_path(sclient, out.path, "/main-ran", tmp_path)
    assert {e.id for e in await sclient.list_images()} == images  # a failed setup is not cached


async def test_pip_of_a_name_the_index_lacks_fails_with_pips_code(sclient: Client, name: str,
                                                                  setup_image: SetupImage,
                                                                  packages: pkg.PackageServer,
                                                                  tmp_path: Path) -> None:
    out = await run(sclient, name, setup_image.name, MAIN, ["pip: quilt-no-such-package"],
                    {"env": packages.env()}, expect_main=False)
    assert out.exit_code == 1
    assert out.props["State"] == "failed"
    assert out.props["FailureReason"] == "setup step 1 (pip: quilt-no-such-package) exited with code 1"
    assert any("No matching distribution found for quilt-no-such-package" in line for line in out.setup), out.setup
    assert "GET /simple/quilt-no-such-package/" in requests(packages, "/simple/")  # pip did ask the index
    assert "main-ran" not in out.stdout
    await no_path(sclient, out.path, "/main-ran", tmp_path)


async def test_a_missing_manager_fails_the_step_with_127(sclient: Client, name: str, busybox: str,
                                                          tmp_path: Path) -> None:
    """busybox has no npm: the step fails as a shell's 'command not found' would, and says so in its stream."""
    out = await run(sclient, name, busybox, MAIN, ["npm: left-pad"], expect_main=False)
    assert out.props["State"] == "failed"
    assert out.exit_code == 127 and out.props["ExitCode"] == 127
    assert out.props["FailureReason"] == "setup step 1 (npm: left-pad) exited with code 127"
    await no_path(sclient, out.path, "/main-ran", tmp_path)


async def test_a_restart_runs_the_steps_again_and_fails_again(sclient: Client, name: str, busybox: str,
                                                               tmp_path: Path) -> None:
    out = await run(sclient, name, busybox, MAIN, ["sh: echo run >> /count; exit 4"], expect_main=False)
    assert out.exit_code == 4
    await sclient.start(out.path)
    assert await sclient.wait(out.path) == 4
    props = await sclient.properties(out.path)
    assert props["State"] == "failed" and props["FailureReason"].endswith("exited with code 4")
    await sclient.copy_from(out.path, "/count", str(tmp_path / "count"))
    assert (tmp_path / "count").read_text() == "run\nrun\n"
    await no_path(sclient, out.path, "/main-ran", tmp_path)
