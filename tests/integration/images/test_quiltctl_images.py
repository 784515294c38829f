"""quiltctl image import|pull|ls|inspect|rm|prune as scripts and people run it: stdout, stderr, exit status; plain
progress lines without a terminal, rich bars on one."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from quilt_agent.client import Client
from tests.integration.images.conftest import Registry

QUILTCTL = shutil.which("quiltctl") or "/usr/bin/quiltctl"


def quiltctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([QUILTCTL, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)


def ok(*args: str) -> subprocess.CompletedProcess[str]:
    result = quiltctl(*args)
    assert result.returncode == 0, (args, result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    return result


async def test_import_prints_the_id_and_plain_progress_lines(images_client: Client, app_archives: dict[str, Path]
                                                              ) -> None:
    result = ok("image", "import", str(app_archives["docker-archive"]), "cli/app:v1")
    image_id = result.stdout.strip()
    assert len(image_id) == 64
    lines = result.stderr.splitlines()
    assert any(line.startswith("unpacking sha256:") for line in lines), lines
    assert all(line.split()[0] in ("checking", "decompressing", "unpacking", "unpacked", "exists")
               for line in lines), lines
    again = ok("image", "import", "-q", str(app_archives["oci-dir"]))
    assert (again.stdout.strip(), again.stderr) == (image_id, "")


async def test_ls_inspect_rm_and_prune(images_client: Client, app_archives: dict[str, Path], busybox_tar: Path,
                                       name: str) -> None:
    image_id = ok("image", "import", "-q", str(app_archives["oci-dir"]), "cli/app:v1").stdout.strip()
    ok("image", "import", "-q", str(busybox_tar))
    table = ok("image", "ls").stdout.splitlines()
    assert table[0].split() == ["NAME", "ID", "SIZE", "CREATED"]
    row = next(line for line in table if line.startswith("cli/app:v1 "))
    assert row.split()[1] == image_id[:12]
    assert any(line.startswith("<none> ") for line in table)
    listed = json.loads(ok("image", "ls", "--json").stdout)
    assert {"Id", "Names", "Digest", "Size", "Layers", "CreatedAt"} <= set(listed[0])
    (inspected,) = json.loads(ok("image", "inspect", "cli/app:v1").stdout)
    assert inspected["Id"] == image_id and inspected["Config"]["config"]["Entrypoint"] == ["/bin/app"]

    ok("create", "--name", name, "cli/app:v1")
    refused = quiltctl("image", "rm", "cli/app:v1")
    assert refused.returncode == 125 and refused.stderr.count("\n") == 1 and "is in use by 1 container" in \
        refused.stderr, refused
    assert ok("image", "rm", "-f", "cli/app:v1").stdout == "cli/app:v1\n"
    assert name not in {e.name for e in await images_client.list_containers()}  # removed with its image
    freed = ok("image", "prune").stdout.strip()
    assert freed.endswith(" freed") and not freed.startswith("0 B"), freed
    assert ok("image", "prune").stdout.strip() == "0 B freed"
    missing = quiltctl("image", "inspect", "cli/app:v1")
    assert missing.returncode == 125 and "No image 'cli/app:v1' known" in missing.stderr


async def test_pull_and_run_with_the_images_own_command(images_client: Client, registry: Registry,
                                                        app_layout: Path) -> None:
    ref = registry.push(f"oci:{app_layout}:v1", "cli/pulled:v1")
    result = ok("image", "pull", ref)
    assert len(result.stdout.strip()) == 64
    assert any(line.startswith("downloading sha256:") for line in result.stderr.splitlines()), result.stderr
    run = ok("run", "--rm", ref)
    assert "args=from-cmd" in run.stdout and "deleted=absent" in run.stdout, run.stdout


async def test_on_a_terminal_progress_is_drawn_as_bars(images_client: Client, registry: Registry,
                                                       app_layout: Path) -> None:
    ref = registry.push(f"oci:{app_layout}:v1", "cli/tty:v1")
    # script(1) gives quiltctl a terminal; COLUMNS keeps rich's bars on one line each.
    result = subprocess.run(["script", "-qec", f"COLUMNS=160 {QUILTCTL} image pull {ref}", "/dev/null"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result
    # The last frame shows each layer done; bytes and speed are in its columns.
    assert "━" in result.stdout and "unpacked sha256:" in result.stdout and "MB" in result.stdout, result.stdout
