"""The setup-commands test image: a Debian bookworm minbase rootfs with pip, npm and gem, built by mmdebstrap from
Debian's packages on the bare machine (the test host has no network) and cached outside the checkout between runs.

    python3 tests/setupimage.py build    # builds it unless the cache has it; prints its path
    python3 tests/setupimage.py path     # where it is (or would be)

The cache file's name carries a hash of everything that decides its content (suite, variant, packages, dpkg
options), so a change here builds a new one and an old one is never used by mistake; the file appears by an atomic
rename, so a build that was cut short leaves nothing that looks finished.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CACHE = Path("/var/cache/quilt-tests")
# The machine's own mirror, as mmdebstrap's argument: deb822 on Debian 12 images, the one-line format on machines
# installed from the ISO.
SOURCES = next((p for p in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
                if p.exists() and p.stat().st_size), Path("/etc/apt/sources.list.d/debian.sources"))
SUITE = "bookworm"
VARIANT = "minbase"
PACKAGES = ("python3-pip", "python3-venv", "nodejs", "npm", "ruby")
# Docs, man pages and translations are half the size and nothing the tests read.
DPKG_OPTIONS = ("path-exclude=/usr/share/man/*", "path-exclude=/usr/share/doc/*", "path-exclude=/usr/share/locale/*")


def key() -> str:
    recipe = {"suite": SUITE, "variant": VARIANT, "packages": sorted(PACKAGES), "dpkgopt": list(DPKG_OPTIONS)}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def path() -> Path:
    return CACHE / f"setup-image-{key()}.tar"


def command(out: Path) -> list[str]:
    return ["mmdebstrap", "--format=tar", f"--variant={VARIANT}", f"--include={','.join(PACKAGES)}",
            *(f"--dpkgopt={o}" for o in DPKG_OPTIONS), SUITE, str(out), str(SOURCES)]


def build(log=sys.stderr) -> Path:
    """The cached image, built first if it is not there."""
    target = path()
    if target.exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".partial-{os.getpid()}-{target.name}")  # a .tar still: mmdebstrap goes by the name
    print(f"setupimage: building {target.name} with mmdebstrap ({', '.join(PACKAGES)}); about a minute",
          file=log, flush=True)
    started = time.monotonic()
    try:
        result = subprocess.run(command(partial), capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"mmdebstrap failed ({result.returncode}):\n{result.stderr[-4000:]}")
        os.rename(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    print(f"setupimage: {target} built in {time.monotonic() - started:.0f} s, "
          f"{target.stat().st_size / 1e6:.0f} MB", file=log, flush=True)
    return target


def main(argv: list[str]) -> int:
    if argv[1:] == ["build"]:
        print(build())
        return 0
    if argv[1:] == ["path"]:
        print(path())
        return 0
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
