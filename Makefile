# Quilt: the two commands a new user types are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON := /usr/bin/python3
VENV := .venv
DESTDIR ?=
TESTHOST := $(PYTHON) tests/testhost.py run --
PYTEST_ARGS ?=

# Debian packages the project needs: building systemd-python, the test host's
# systemd/bus/polkit, gdbus and busctl for tests, busybox-static for test images.
APT_PACKAGES := python3 python3-venv python3-dev gcc pkg-config libsystemd-dev \
	systemd dbus polkitd libglib2.0-bin util-linux busybox-static make zstd

.PHONY: setup demo test test-unit test-testhost test-integration bench install install-data clean

setup: $(VENV)/.installed

.apt-checked: Makefile
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "setup: installing Debian packages:" $$missing; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@touch $@

$(VENV)/.installed: .apt-checked pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@set -o pipefail; $(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test]' 2>&1 \
		| { grep -v 'is ignored: it is neither a file nor a directory' || true; }
	@touch $@

# On a machine whose PID 1 is systemd the demo uses that systemd; elsewhere it boots the test host.
demo: setup
	@if [ -d /run/systemd/system ] && [ "$$(cat /proc/1/comm)" = systemd ]; then \
		$(MAKE) -s install && systemctl daemon-reload && systemctl reload dbus && scripts/demo.sh; \
	else \
		$(TESTHOST) scripts/demo.sh; \
	fi

test: setup
	@$(VENV)/bin/python -m pytest -q tests/unit tests/host $(PYTEST_ARGS)
	@$(TESTHOST) $(VENV)/bin/python -m pytest -q tests/integration $(PYTEST_ARGS)

bench: setup
	@$(TESTHOST) $(VENV)/bin/python bench/lifecycle.py

# Installs into this machine's /usr: the data files and links to the venv's commands.
install: install-data
	ln -sf $(CURDIR)/$(VENV)/bin/quilt-agent $(DESTDIR)/usr/bin/quilt-agent
	ln -sf $(CURDIR)/$(VENV)/bin/quiltctl $(DESTDIR)/usr/bin/quiltctl

# What a package installs besides the Python code (the test host uses this too).
install-data:
	install -Dm644 units/quilt-agent.service $(DESTDIR)/usr/lib/systemd/system/quilt-agent.service
	install -Dm644 units/quilt.slice $(DESTDIR)/usr/lib/systemd/system/quilt.slice
	install -Dm644 dbus/org.quilt.Runtime.conf $(DESTDIR)/usr/share/dbus-1/system.d/org.quilt.Runtime.conf
	install -Dm644 dbus/org.quilt.Runtime.service $(DESTDIR)/usr/share/dbus-1/system-services/org.quilt.Runtime.service
	install -Dm644 dbus/org.quilt.Runtime.xml $(DESTDIR)/usr/share/dbus-1/interfaces/org.quilt.Runtime.xml
	install -Dm644 polkit/org.quilt.runtime.policy $(DESTDIR)/usr/share/polkit-1/actions/org.quilt.runtime.policy

clean:
	rm -rf $(VENV) .apt-checked build *.egg-info
