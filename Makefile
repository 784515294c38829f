# Quilt: the two commands a new user types are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON := /usr/bin/python3
VENV := .venv
DESTDIR ?=
TESTHOST := $(PYTHON) tests/testhost.py run --
# Benchmarks measure the agent as users run it: without the test host's asyncio debug mode (QUILT_LOOP_CHECK),
# which slows every call (bench/hostcheck.py refuses to measure an agent that has it).
BENCH_HOST := $(PYTHON) tests/testhost.py run --loop-check 0
PYTEST_ARGS ?=

# Debian packages the project needs: building systemd-python, the test host's
# systemd/bus/polkit, gdbus and busctl for tests, busybox-static for test images.
# nftables: `nft` for Quilt's own table (published ports, egress); iputils-ping: the network tests' ping
# (busybox 1.35's needs CAP_NET_RAW, iputils' uses the unprivileged ICMP sockets ping_group_range allows).
# tmux: a terminal for the `quiltctl exec -it` tests (send-keys, capture-pane).
# Images: docker-registry (a real registry on loopback), skopeo (push, archives), umoci (OCI
# layouts with whiteouts), apache2-utils (htpasswd -B for basic auth), openssl (the token server's key).
# Setup commands: mmdebstrap (the Debian image with pip, npm and gem, tests/setupimage.py, built before
# the test host, which has no network), ruby (`gem build` and `gem generate_index` for the tests' gem index),
# dpkg-dev (dpkg-scanpackages for the tests' apt repository). libseccomp2: the seccomp filter (helper/seccomp.py).
# libnss-systemd: names for containers' host ids (quilt-NAME-0, from the agent's /run/userdb records).
# podman: `podman save` archives in the image import tests.
# iproute2 (ip, ss), procps (sysctl), xz-utils and bzip2 (the unit tests' compressed layers): a minimal Debian,
# as CI images are, lacks them. tests/host/test_setup_programs.py fails, naming the program and its package,
# when the suite runs a program that no package here (or one every Debian has) provides.
# debhelper, dh-python, lintian and python3-pip/-setuptools/-wheel build the Debian package `make test` installs
# in the test host (`make deb`); python3-click/-rich/-dnslib/-systemd are its Depends, which the test host's apt,
# without a network, finds only if this machine has them.
APT_PACKAGES := python3 python3-venv python3-dev gcc pkg-config libsystemd-dev \
	systemd dbus polkitd libglib2.0-bin util-linux busybox-static make zstd \
	nftables iputils-ping tmux \
	docker-registry skopeo umoci apache2-utils openssl \
	mmdebstrap ruby dpkg-dev libseccomp2 libnss-systemd podman iproute2 procps xz-utils bzip2 \
	debhelper dh-python lintian python3-pip python3-setuptools python3-wheel \
	python3-click python3-rich python3-dnslib python3-systemd catatonit systemd-container libnss-mymachines

.PHONY: setup demo test test-unit test-testhost test-integration bench bench-network bench-generator bench-health bench-images bench-setup install install-data clean

setup: $(VENV)/.installed $(MONITOR)

# What each container's monitor becomes once the container runs (monitor/quilt-monitor.c), built as the package
# builds it (Debian's hardening flags) for the test host's checkout install (install-data).
MONITOR := build/quilt-monitor
$(MONITOR): monitor/quilt-monitor.c monitor/logfile.c monitor/logfile.h .apt-checked
	@mkdir -p build
	@gcc $$(dpkg-buildflags --get CPPFLAGS) $$(dpkg-buildflags --get CFLAGS) -Wall -Wextra -Werror -o $@ monitor/quilt-monitor.c monitor/logfile.c \
		$$(dpkg-buildflags --get LDFLAGS)

.apt-checked: Makefile
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "setup: installing Debian packages:" $$missing; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
		if echo " $$missing " | grep -q ' docker-registry ' && [ -d /run/systemd/system ]; then \
			echo "setup: docker-registry is for the tests (they start their own): disabling its service"; \
			systemctl disable --now docker-registry.service >/dev/null 2>&1 || true; \
		fi; \
	fi
	@touch $@

$(VENV)/.installed: .apt-checked pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@set -o pipefail; $(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test]' 2>&1 \
		| { grep -v -e 'is ignored: it is neither a file nor a directory' -e 'DEPRECATION: .*systemd-python.* using the legacy .*setup\.py' || true; }
	@touch $@

# On a machine whose PID 1 is systemd the demo uses that systemd; elsewhere it boots the test host.
demo: setup
	@$(VENV)/bin/python tests/setupimage.py build >/dev/null  # the setup-commands part; needs the network
	@if [ -d /run/systemd/system ] && [ "$$(cat /proc/1/comm)" = systemd ]; then \
		$(MAKE) -s install && systemctl daemon-reload && systemctl reload dbus && scripts/demo.sh; \
	else \
		$(TESTHOST) scripts/demo.sh; \
	fi

# The integration suite runs against the Debian package, installed in the test host as an admin would: the
# bits an admin installs are the bits tested. tests/host/test_package.py installs, upgrades and removes it.
test: setup deb
	@$(VENV)/bin/python -m pytest -q tests/unit tests/host $(PYTEST_ARGS)
	@$(VENV)/bin/python tests/setupimage.py build >/dev/null
	@$(PYTHON) tests/testhost.py run --deb $(DEB) -- $(VENV)/bin/python -m pytest -q tests/integration $(PYTEST_ARGS)

# The developer's shortcut: the integration suite against the checkout's venv, without building the package.
test-integration: setup
	@$(VENV)/bin/python tests/setupimage.py build >/dev/null
	@$(TESTHOST) $(VENV)/bin/python -m pytest -q tests/integration $(PYTEST_ARGS)

# `make bench` measures Quilt beside these peers (bench/peers.py); only the bench target installs them,
# and matplotlib (the chart) and py-spy (profiling the agent) into the venv. Quilt is measured as users get it:
# the Debian package, installed in the test host (its quiltctl starts on the system's python3 -I, byte-compiled).
BENCH_APT_PACKAGES := crun runc bubblewrap
BENCH_PIP_PACKAGES := matplotlib>=3.6 py-spy>=0.3
BENCH_ARGS ?=

bench: setup deb
	@missing=$$(for p in $(BENCH_APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "bench: installing Debian packages:" $$missing; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@$(VENV)/bin/python -c 'import matplotlib' 2>/dev/null && test -x $(VENV)/bin/py-spy || { \
		set -o pipefail; $(VENV)/bin/pip install -q --disable-pip-version-check $(foreach p,$(BENCH_PIP_PACKAGES),'$(p)') 2>&1 \
		| { grep -v 'is ignored: it is neither a file nor a directory' || true; }; }
	@$(BENCH_HOST) --deb $(DEB) -- $(VENV)/bin/python bench/peers.py $(BENCH_ARGS)

# What networking costs a container (run-to-exit with and without a network) and container-to-container
# throughput beside the host's loopback (iperf3).
bench-network: setup
	@dpkg-query -W -f='$${Status}\n' iperf3 2>/dev/null | grep -q 'ok installed' || { \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iperf3 >/dev/null; }
	@$(BENCH_HOST) -- $(VENV)/bin/python bench/network.py $(BENCH_ARGS)

# quilt-generator's run time for 100 container files, as systemd runs it at each boot and daemon-reload.
bench-generator: setup
	@$(VENV)/bin/python bench/generator.py build/bench-generator $(BENCH_ARGS)

# What health checks cost the agent in CPU: 20 running containers without checks, then each checked every second.
bench-health: setup
	@$(BENCH_HOST) -- $(VENV)/bin/python bench/health.py $(BENCH_ARGS)

# Import and pull throughput of a ~100 MB image, and the time of a second import (bench/images.py).
bench-images: setup
	@$(BENCH_HOST) -- $(VENV)/bin/python bench/images.py $(BENCH_ARGS)

# First start of a container whose setup pip-installs from a local index, its cached start, and a plain run of
# the same image (bench/setup.py); the image is built outside the test host, which has no network.
bench-setup: setup
	@$(VENV)/bin/python tests/setupimage.py build >/dev/null
	@$(BENCH_HOST) -- $(VENV)/bin/python bench/setup.py $(BENCH_ARGS)

# The Debian package, build/quilt-runtime_VERSION_ARCH.deb (packaging/build-deb, packaging/README.md): rebuilt
# when a file it is made of changes. Named quilt-runtime: Debian's own "quilt" is the patch tool. Built for this
# machine's architecture: quilt-monitor is compiled.
VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
ARCH := $(shell dpkg --print-architecture)
DEB := build/quilt-runtime_$(VERSION)_$(ARCH).deb
DEB_INPUTS := $(wildcard $(shell git ls-files --cached --others --exclude-standard quilt_agent monitor units dbus polkit man \
	debian packaging pyproject.toml README.md 2>/dev/null))
.PHONY: deb

deb: $(DEB)

$(DEB): $(DEB_INPUTS)
	@packaging/build-deb

# Installs the package on this machine, with apt (which fetches its dependencies). Only where systemd is PID 1:
# elsewhere Quilt cannot run, and the test host is the place to try it (`tests/testhost.py run --deb ...`).
install: deb
	@if [ ! -d /run/systemd/system ] || [ "$$(cat /proc/1/comm)" != systemd ]; then \
		echo "install: this machine's PID 1 is not systemd; try the package in a test host:" \
			"python3 tests/testhost.py run --deb $(DEB) -- bash" >&2; exit 1; fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ./$(DEB)

# What the package installs besides the Python code, for the test host's venv path (tests/testhost.py without --deb).
install-data: $(MONITOR)
	install -Dm755 $(MONITOR) $(DESTDIR)/usr/libexec/quilt/quilt-monitor
	install -Dm644 units/quilt-agent.service $(DESTDIR)/usr/lib/systemd/system/quilt-agent.service
	install -Dm644 units/quilt.slice $(DESTDIR)/usr/lib/systemd/system/quilt.slice
	install -Dm644 units/quilt-restart.service $(DESTDIR)/usr/lib/systemd/system/quilt-restart.service
	install -Dm644 dbus/org.quilt.Runtime.conf $(DESTDIR)/usr/share/dbus-1/system.d/org.quilt.Runtime.conf
	install -Dm644 dbus/org.quilt.Runtime.service $(DESTDIR)/usr/share/dbus-1/system-services/org.quilt.Runtime.service
	install -Dm644 dbus/org.quilt.Runtime.xml $(DESTDIR)/usr/share/dbus-1/interfaces/org.quilt.Runtime.xml
	install -Dm644 polkit/org.quilt.runtime.policy $(DESTDIR)/usr/share/polkit-1/actions/org.quilt.runtime.policy
	install -Dm644 polkit/quilt-owner-example.rules $(DESTDIR)/usr/share/doc/quilt-runtime/examples/quilt-owner-example.rules
	install -Dm644 man/quiltctl.1 $(DESTDIR)/usr/share/man/man1/quiltctl.1
	install -Dm644 man/quilt-agent.8 $(DESTDIR)/usr/share/man/man8/quilt-agent.8
	install -Dm644 man/quilt.container.5 $(DESTDIR)/usr/share/man/man5/quilt.container.5
	install -Dm755 debian/bin/quilt-generator $(DESTDIR)/usr/lib/systemd/system-generators/quilt-generator

clean:
	rm -rf $(VENV) .apt-checked build *.egg-info
