"""Each package manager's install, from the offline servers over the container network, and the main command sees
what it installed (setup commands; quilt_agent/setup.py)."""
from __future__ import annotations

import posixpath

from quilt_agent.client import Client
from tests import packageindex as pkg
from tests.integration.setup.conftest import SetupImage, headers, requests, run


async def test_pip_installs_a_wheel_the_command_imports(sclient: Client, name: str, setup_image: SetupImage,
                                                        packages: pkg.PackageServer) -> None:
    out = await run(sclient, name, setup_image.name,
                    f"python3 -c 'import {pkg.PIP_MODULE}; print({pkg.PIP_MODULE}.hello())' && {pkg.PIP_SCRIPT}",
                    [f"pip: {pkg.PIP_NAME}"], {"env": packages.env()})
    assert out.exit_code == 0, out
    assert out.stdout[-2:] == [f"{pkg.GREETING} via pip"] * 2, out
    assert headers(out.setup) == [f"quilt: setup step 1/1: pip: {pkg.PIP_NAME}"], out.setup
    assert any(f"Successfully installed {pkg.PIP_NAME}-{pkg.PIP_VERSION}" in line for line in out.setup), out.setup
    assert f"GET /packages/{pkg.PIP_MODULE}-{pkg.PIP_VERSION}-py3-none-any.whl" in requests(packages, "/packages/")
    assert out.props["State"] == "exited" and out.props["FailureReason"] == ""


async def test_npm_installs_globally_and_the_bin_is_on_path(sclient: Client, name: str, setup_image: SetupImage,
                                                            packages: pkg.PackageServer) -> None:
    out = await run(sclient, name, setup_image.name,
                    f"command -v {pkg.NPM_BIN} && {pkg.NPM_BIN} && "
                    f"node -e 'console.log(require(\"{pkg.NPM_NAME}\").hello())'",
                    [f"npm: {pkg.NPM_NAME}"], {"env": [*packages.env(), "NODE_PATH=/usr/local/lib/node_modules"]})
    assert out.exit_code == 0, out
    assert out.stdout[-3:] == [f"/usr/local/bin/{pkg.NPM_BIN}", f"{pkg.GREETING} via npm", f"{pkg.GREETING} via npm"]
    assert headers(out.setup) == [f"quilt: setup step 1/1: npm: {pkg.NPM_NAME}"], out.setup
    assert f"GET /npm/-/{pkg.NPM_NAME}-{pkg.NPM_VERSION}.tgz" in requests(packages, "/npm/")


async def test_gem_installs_from_a_source_given_in_the_step(sclient: Client, name: str, setup_image: SetupImage,
                                                            packages: pkg.PackageServer) -> None:
    out = await run(sclient, name, setup_image.name,
                    f"{pkg.GEM_BIN} && ruby -e 'require \"{pkg.GEM_NAME}\"; puts QuiltHello.hello'",
                    [f"gem: {packages.gem_source()} {pkg.GEM_NAME}"])
    assert out.exit_code == 0, out
    assert out.stdout[-2:] == [f"{pkg.GREETING} via gem"] * 2, out
    assert any(f"Successfully installed {pkg.GEM_NAME}-{pkg.GEM_VERSION}" in line for line in out.setup), out.setup
    assert f"GET /gem/gems/{pkg.GEM_NAME}-{pkg.GEM_VERSION}.gem" in requests(packages, "/gem/")


async def test_apt_installs_a_deb_from_a_flat_repository(sclient: Client, name: str, setup_image: SetupImage,
                                                         packages: pkg.PackageServer) -> None:
    """A real apt-get update and install from the offline flat repository, the image's own sources removed by a sh
    step. The test finishing at all shows apt-get asked nothing (a debconf prompt would wait forever); the package's
    postinst records the DEBIAN_FRONTEND dpkg ran it under."""
    steps = ["sh: rm -f /etc/apt/sources.list /etc/apt/sources.list.d/* && "
             f"echo '{packages.apt_source()}' > /etc/apt/sources.list.d/local.list",
             f"apt: {pkg.DEB_NAME}"]
    asked = len(packages.requests())
    out = await run(sclient, name, setup_image.name,
                    f"command -v {pkg.DEB_BIN} && {pkg.DEB_BIN} && cat {pkg.DEB_FRONTEND_FILE} && "
                    f"dpkg-query -W -f '${{Package}} ${{Version}} ${{Status}}\\n' {pkg.DEB_NAME}", steps)
    assert out.exit_code == 0, out
    assert out.stdout[-4:] == [f"/usr/bin/{pkg.DEB_BIN}", f"{pkg.GREETING} via apt", "DEBIAN_FRONTEND=noninteractive",
                               f"{pkg.DEB_NAME} {pkg.DEB_VERSION} install ok installed"], out
    assert headers(out.setup) == [f"quilt: setup step {i}/2: {s}" for i, s in enumerate(steps, 1)], out.setup
    assert any(f"Setting up {pkg.DEB_NAME} ({pkg.DEB_VERSION})" in line for line in out.setup), out.setup
    made = [" ".join((r.split(" ", 1)[0], posixpath.normpath(r.split(" ", 1)[1]))) for r in packages.requests()[asked:]]
    assert f"GET /apt/{pkg.DEB_FILE}" in made, made
    assert out.props["State"] == "exited" and out.props["FailureReason"] == ""


async def test_steps_run_in_order_with_the_containers_env_user_and_workdir(
        sclient: Client, name: str, setup_image: SetupImage, packages: pkg.PackageServer) -> None:
    """Three managers and sh steps in one list, in order; each step sees the container's env, workdir and user,
    and what an earlier step left (the shell steps record it)."""
    steps = [
        "sh: echo \"1 $(id -u) $(pwd) $GREETING\" >> /tmp/order",
        f"pip: {pkg.PIP_NAME}",
        "sh: python3 -c 'import quilt_hello' && echo 2-pip-seen >> /tmp/order",
        f"npm: {pkg.NPM_NAME}",
        f"gem: {packages.gem_source()} {pkg.GEM_NAME}",
        f"sh: {pkg.NPM_BIN} >> /tmp/order && {pkg.GEM_BIN} >> /tmp/order",
    ]
    out = await run(sclient, name, setup_image.name, "cat /tmp/order; pwd", steps,
                    {"env": [*packages.env(), "GREETING=from-env"], "workdir": "/srv"})
    assert out.exit_code == 0, out
    assert out.stdout[-5:] == ["1 0 /srv from-env", "2-pip-seen", f"{pkg.GREETING} via npm",
                               f"{pkg.GREETING} via gem", "/srv"], out
    assert headers(out.setup) == [f"quilt: setup step {i}/6: {s}" for i, s in enumerate(steps, 1)], out.setup


async def test_setup_starts_from_a_clean_environment(sclient: Client, name: str, setup_image: SetupImage) -> None:
    """Steps see the container's env and what the manager needs, never the agent's or the machine's (whose
    PIP_* and NODE_* variables would send managers elsewhere)."""
    out = await run(sclient, name, setup_image.name, "true", ["sh: env | sort"], {"env": ["ONLY=this"]})
    env = {line.split("=", 1)[0] for line in out.setup if "=" in line and not line.startswith("quilt:")}
    assert "ONLY" in env
    assert not {k for k in env if k.startswith(("PIP_", "NODE_", "INVOCATION_ID", "NOTIFY_SOCKET", "JOURNAL_",
                                                  "SYSTEMD_"))}, env
