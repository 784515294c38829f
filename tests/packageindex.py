"""Offline package servers for setup commands: a pip "simple" index, an npm registry, a gem index and a flat apt
repository, built at test time from packages written here, served as static files by `python3 -m http.server`.

Nothing comes from the internet: the wheel is written by hand with zipfile, the npm tarball with tarfile, the gem
by the machine's own `gem build` (ruby), the gem index by `gem generate_index`, the .deb by `dpkg-deb --build` and
its index by `dpkg-scanpackages` (dpkg-dev). One tree holds the four:

    ROOT/simple/quilt-hello/index.html       pip:  PIP_INDEX_URL=BASE/simple/  (and PIP_TRUSTED_HOST, plain http)
    ROOT/packages/quilt_hello-1.0-....whl
    ROOT/npm/quilt-hello                     npm:  npm_config_registry=BASE/npm/  (the packument: a static file)
    ROOT/npm/-/quilt-hello-1.0.0.tgz
    ROOT/gem/specs.4.8.gz, gems/, quick/     gem:  gem install --clear-sources --source BASE/gem/ quilt_hello
    ROOT/apt/Packages(.gz), Release          apt:  deb [trusted=yes] BASE/apt ./  (a flat repository, unsigned)
    ROOT/apt/quilt-hello-deb_1.0_all.deb

BASE is the address a container reaches the server at (the Quilt network's gateway, from the test host's side): the
npm packument names its tarball by absolute URL, so the tree is built for one BASE.

    python3 tests/packageindex.py build ROOT BASE    # e.g. BASE http://10.89.0.1:8765
    python3 tests/packageindex.py serve ROOT PORT    # serve ROOT on 0.0.0.0:PORT, access log on stderr

Used by tests/integration/setup/ and meant for bench/ and scripts/ too.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

# What each package provides, for the tests to check.
PIP_NAME, PIP_VERSION, PIP_MODULE = "quilt-hello", "1.0", "quilt_hello"
PIP_SCRIPT = "quilt-hello-py"  # a console script (entry_points.txt), on PATH after the install
NPM_NAME, NPM_VERSION, NPM_BIN = "quilt-hello", "1.0.0", "quilt-hello-js"
GEM_NAME, GEM_VERSION, GEM_BIN = "quilt_hello", "1.0.0", "quilt-hello-rb"
DEB_NAME, DEB_VERSION, DEB_BIN = "quilt-hello-deb", "1.0", "quilt-hello-deb"  # DEB_BIN in /usr/bin
DEB_FILE = f"{DEB_NAME}_{DEB_VERSION}_all.deb"
# The .deb's postinst writes here the DEBIAN_FRONTEND it ran under (what apt-get gave dpkg), for the tests to read.
DEB_FRONTEND_FILE = f"/var/lib/{DEB_NAME}/frontend"
GREETING = "hello from quilt_hello"  # what each package's function or command prints, with " via pip/npm/gem/apt"


# --- pip -----------------------------------------------------------------------------------------


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def wheel(directory: Path, name: str = PIP_NAME, version: str = PIP_VERSION, module: str = PIP_MODULE) -> Path:
    """A pure-Python wheel (PEP 427) with one package `module`: hello() returns the greeting, and a console
    script `quilt-hello-py` prints it."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": (f'def hello():\n    return "{GREETING} via pip"\n\n\n'
                                  f'def main():\n    print(hello())\n').encode(),
        f"{info}/METADATA": (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                             f"Summary: A wheel Quilt's tests write by hand\n").encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: quilt-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/entry_points.txt": f"[console_scripts]\n{PIP_SCRIPT} = {module}:main\n".encode(),
        f"{info}/top_level.txt": f"{module}\n".encode(),
    }
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in files.items())
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for path, data in files.items():
            z.writestr(zipfile.ZipInfo(path, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return out


def pip_index(root: Path, wheels: list[Path]) -> None:
    """PEP 503: ROOT/simple/index.html and ROOT/simple/NAME/index.html linking to ROOT/packages/FILE#sha256=."""
    by_name: dict[str, list[Path]] = {}
    for w in wheels:
        by_name.setdefault(w.name.split("-")[0].lower().replace("_", "-"), []).append(w)
    (root / "simple").mkdir(parents=True, exist_ok=True)
    links = "".join(f'<a href="{n}/">{n}</a>\n' for n in sorted(by_name))
    (root / "simple/index.html").write_text(f"<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n")
    for n, files in by_name.items():
        (root / "simple" / n).mkdir(exist_ok=True)
        links = "".join(f'<a href="../../packages/{w.name}#sha256={hashlib.sha256(w.read_bytes()).hexdigest()}">'
                        f'{w.name}</a>\n' for w in files)
        (root / "simple" / n / "index.html").write_text(f"<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n")


# --- npm -----------------------------------------------------------------------------------------


def npm_tarball(name: str = NPM_NAME, version: str = NPM_VERSION) -> tuple[bytes, dict]:
    """The .tgz `npm pack` would make (package/package.json, package/index.js) and its package.json."""
    manifest = {"name": name, "version": version, "description": "A package Quilt's tests write by hand",
                "main": "index.js", "bin": {NPM_BIN: "index.js"}, "license": "MIT"}
    files = {
        "package/package.json": (json.dumps(manifest, indent=2) + "\n").encode(),
        "package/index.js": (f"#!/usr/bin/env node\n"
                             f"const hello = () => '{GREETING} via npm';\n"
                             f"module.exports = {{ hello }};\n"
                             f"if (require.main === module) console.log(hello());\n").encode(),
    }
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path, data in files.items():
            member = tarfile.TarInfo(path)
            member.size, member.mode, member.mtime = len(data), 0o755 if path.endswith(".js") else 0o644, 1577836800
            tar.addfile(member, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0), manifest


def npm_registry(root: Path, base_url: str) -> None:
    """ROOT/npm/NAME (the packument, what GET REGISTRY/NAME answers) and ROOT/npm/-/NAME-VERSION.tgz."""
    data, manifest = npm_tarball()
    (root / "npm/-").mkdir(parents=True, exist_ok=True)
    tgz = f"{NPM_NAME}-{NPM_VERSION}.tgz"
    (root / "npm/-" / tgz).write_bytes(data)
    version = {**manifest, "_id": f"{NPM_NAME}@{NPM_VERSION}", "dist": {
        "tarball": f"{base_url.rstrip('/')}/npm/-/{tgz}",
        "shasum": hashlib.sha1(data).hexdigest(),
        "integrity": "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()}}
    packument = {"_id": NPM_NAME, "name": NPM_NAME, "dist-tags": {"latest": NPM_VERSION},
                 "versions": {NPM_VERSION: version}, "time": {NPM_VERSION: "2020-01-01T00:00:00.000Z"}}
    (root / "npm" / NPM_NAME).write_text(json.dumps(packument, indent=2) + "\n")


# --- gem -----------------------------------------------------------------------------------------


GEMSPEC = f"""Gem::Specification.new do |s|
  s.name = "{GEM_NAME}"
  s.version = "{GEM_VERSION}"
  s.summary = "A gem Quilt's tests build"
  s.authors = ["Quilt tests"]
  s.license = "MIT"
  s.homepage = "https://example.invalid/quilt"
  s.files = ["lib/{GEM_NAME}.rb", "bin/{GEM_BIN}"]
  s.bindir = "bin"
  s.executables = ["{GEM_BIN}"]
end
"""


def gem_index(root: Path, work: Path) -> None:
    """`gem build` a one-file gem with an executable in WORK, then `gem generate_index` over ROOT/gem."""
    src = work / "gem-src"
    (src / "lib").mkdir(parents=True, exist_ok=True)
    (src / "bin").mkdir(exist_ok=True)
    (src / f"lib/{GEM_NAME}.rb").write_text(f'module QuiltHello\n  def self.hello\n    "{GREETING} via gem"\n'
                                            f'  end\nend\n')
    (src / f"bin/{GEM_BIN}").write_text(f'#!/usr/bin/env ruby\nrequire "{GEM_NAME}"\nputs QuiltHello.hello\n')
    os.chmod(src / f"bin/{GEM_BIN}", 0o755)
    (src / f"{GEM_NAME}.gemspec").write_text(GEMSPEC)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "LANG": "C.UTF-8"}  # not the machine's GEM_* or the like
    _run(["gem", "build", f"{GEM_NAME}.gemspec"], cwd=src, env=env)
    (root / "gem/gems").mkdir(parents=True, exist_ok=True)
    shutil.move(src / f"{GEM_NAME}-{GEM_VERSION}.gem", root / "gem/gems" / f"{GEM_NAME}-{GEM_VERSION}.gem")
    _run(["gem", "generate_index", "--directory", str(root / "gem")], cwd=work, env=env)


def _run(cmd: list[str], **kwargs: object) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if result.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")


# --- apt -----------------------------------------------------------------------------------------


def deb(directory: Path, work: Path) -> Path:
    """`dpkg-deb --build` a binary package (Architecture: all) with /usr/bin/quilt-hello-deb, a shell script printing
    the greeting, and a postinst that records $DEBIAN_FRONTEND in DEB_FRONTEND_FILE."""
    src = work / "deb-src"
    shutil.rmtree(src, ignore_errors=True)
    (src / "DEBIAN").mkdir(parents=True)
    (src / "usr/bin").mkdir(parents=True)
    (src / "DEBIAN/control").write_text(
        f"Package: {DEB_NAME}\nVersion: {DEB_VERSION}\nArchitecture: all\n"
        f"Maintainer: Quilt tests <tests@example.invalid>\nSection: misc\nPriority: optional\n"
        f"Description: A package Quilt's tests build\n One shell script that prints a greeting.\n")
    frontend = Path(DEB_FRONTEND_FILE)
    (src / "DEBIAN/postinst").write_text(
        f'#!/bin/sh\nset -e\nif [ "$1" = configure ]; then\n    mkdir -p {frontend.parent}\n'
        f'    echo "DEBIAN_FRONTEND=${{DEBIAN_FRONTEND:-}}" > {frontend}\nfi\n')
    (src / f"usr/bin/{DEB_BIN}").write_text(f'#!/bin/sh\necho "{GREETING} via apt"\n')
    for path in (src / "DEBIAN/postinst", src / f"usr/bin/{DEB_BIN}"):
        os.chmod(path, 0o755)
    for path in (src / "DEBIAN", src / "DEBIAN/control", src / "usr", src / "usr/bin"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / DEB_FILE
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "SOURCE_DATE_EPOCH": "1577836800"}
    _run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(src), str(out)], env=env)
    return out


def apt_repository(root: Path, work: Path) -> None:
    """A flat repository in ROOT/apt (`deb [trusted=yes] BASE/apt ./`): the .deb, its Packages index by
    `dpkg-scanpackages`, Packages.gz, and an unsigned Release with their sizes and hashes (trusted=yes: no key)."""
    repo = root / "apt"
    deb(repo, work)
    result = subprocess.run(["dpkg-scanpackages", "--multiversion", ".", "/dev/null"], cwd=repo, capture_output=True,
                            text=True, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    if result.returncode or f"Package: {DEB_NAME}" not in result.stdout:
        raise RuntimeError(f"dpkg-scanpackages failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    index = result.stdout.encode()
    files = {"Packages": index, "Packages.gz": gzip.compress(index, mtime=0)}
    release = ["Origin: quilt-tests", "Label: quilt-tests", "Suite: quilt-tests", "Codename: quilt-tests",
               "Date: Wed, 01 Jan 2020 00:00:00 UTC", "Description: Quilt's test packages"]
    for field, algo in (("MD5Sum", hashlib.md5), ("SHA256", hashlib.sha256)):
        release.append(f"{field}:")
        release += [f" {algo(data).hexdigest()} {len(data)} {name}" for name, data in files.items()]
    for name, data in files.items():
        (repo / name).write_bytes(data)
    (repo / "Release").write_text("\n".join(release) + "\n")


# --- all four, and the server --------------------------------------------------------------------


def build(root: Path, base_url: str) -> Path:
    """The four indexes under ROOT (made if missing), for containers that reach ROOT at base_url."""
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    work = root.parent / f".{root.name}-work"
    pip_index(root, [wheel(root / "packages")])
    npm_registry(root, base_url)
    gem_index(root, work)
    apt_repository(root, work)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def access_log_requests(log: Path) -> list[str]:
    """'METHOD PATH' of each request in an access log so far, as http.server and Debian's docker-registry (the
    image tests') write them."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if '] "' in line:
            out.append(line.split('] "', 1)[1].split(" HTTP/")[0])
    return out


@dataclass
class PackageServer:
    """`python3 -m http.server` over a built tree; its access log (stderr) in a file."""

    root: Path
    port: int
    base_url: str
    process: subprocess.Popen[bytes]
    log: Path

    def requests(self) -> list[str]:
        """The access log's request lines so far, e.g. 'GET /simple/quilt-hello/' (by any client)."""
        return access_log_requests(self.log)

    def env(self) -> list[str]:
        """The container environment that points pip and npm here (gem takes --source in its step)."""
        host = self.base_url.split("://", 1)[1].rstrip("/")
        return [f"PIP_INDEX_URL={self.base_url}/simple/", f"PIP_TRUSTED_HOST={host.split(':')[0]}",
                f"npm_config_registry={self.base_url}/npm/"]

    def gem_source(self) -> str:
        return f"--clear-sources --source {self.base_url}/gem/"

    def apt_source(self) -> str:
        """The sources.list line for the flat apt repository (unsigned: trusted=yes)."""
        return f"deb [trusted=yes] {self.base_url}/apt ./"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def serve(root: Path, address: str, port: int = 0, log: Path | None = None) -> PackageServer:
    """Build the tree for http://ADDRESS:PORT and serve it on 0.0.0.0:PORT (a free port if 0)."""
    port = port or free_port()
    base_url = f"http://{address}:{port}"
    build(root, base_url)
    log = log or root.parent / f"{root.name}-access.log"
    process = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "0.0.0.0", "--directory", str(root),
                                str(port)], stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    wait_listening(port, process, log, "http.server")
    return PackageServer(root, port, base_url, process, log)


def wait_listening(port: int, process: subprocess.Popen[bytes], log: Path, what: str) -> None:
    """Return once a test server started as process answers on 127.0.0.1:port; RuntimeError with its log if it
    ends or is not there within 10 s."""
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"{what} on port {port} did not start: {log.read_text(errors='replace')}")
            time.sleep(0.05)


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[1] == "build":
        print(build(Path(argv[2]), argv[3]))
        return 0
    if len(argv) == 4 and argv[1] == "serve":
        os.execv(sys.executable, [sys.executable, "-m", "http.server", "--bind", "0.0.0.0", "--directory", argv[2],
                                  argv[3]])
    print(__doc__.split("\n\n")[2], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
