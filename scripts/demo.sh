#!/usr/bin/env bash
# What `make demo` shows, run on a systemd host (the test host or a real one).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

image=$(mktemp -d)/busybox.tar
trap 'rm -rf "$(dirname "$image")"' EXIT

step "The agent, started by systemd, answers on the system bus"
show systemctl start quilt-agent
show busctl get-property org.quilt.Runtime /org/quilt/Runtime org.quilt.Runtime.Manager Version

step "A busybox image, built on the spot from Debian's busybox-static"
show scripts/busybox-rootfs.sh "$image"
ls -lh "$image"

step "Create and run a container with plain busctl (64 MiB memory, 50% of a CPU)"
show busctl call org.quilt.Runtime /org/quilt/Runtime org.quilt.Runtime.Manager RunContainer -- 'ssasa{sv}' \
    hello "$image" 3 /bin/sh -c 'echo "Hello from $(hostname), pid $$"; echo "a line on stderr" >&2; exit 3' \
    2 memory_max t 67108864 cpu_quota d 50
path=$(busctl call org.quilt.Runtime /org/quilt/Runtime org.quilt.Runtime.Manager GetContainer s hello | cut -d'"' -f2)
busctl call org.quilt.Runtime "$path" org.quilt.Runtime.Container Wait >/dev/null
for prop in State ExitCode Unit MemoryMax CPUQuota; do
    show busctl get-property org.quilt.Runtime "$path" org.quilt.Runtime.Container "$prop"
done

step "The same with quiltctl: a long-running container and the listing"
show quiltctl run -d --name web -e GREETING=hi -m 32M "$image" -- /bin/sh -c 'while true; do echo "$GREETING from web"; sleep 1; done'
sleep 1.2
show quiltctl ps -a
show systemctl status quilt-web.scope --no-pager --lines=0

step "Container output is in the journal: journalctl -u 'quilt-*'"
show journalctl -u 'quilt-*' --no-pager -o short-precise _TRANSPORT=stdout
show quiltctl logs -n 2 web

step "Networks: containers find each other by name; a port published on the host"
show quiltctl network ls
show quiltctl run -d --name site -p 8080:80 "$image" -- /bin/sh -c 'echo "hello from site" > /index.html; exec httpd -f -p 80 -h /'
printf '$ quiltctl inspect site | grep -A4 Addresses\n'; quiltctl inspect site | grep -A4 '"Addresses"'
show quiltctl run --rm "$image" -- wget -q -O- http://site/index.html
show quiltctl icc ping -c 2 web site
sleep 0.3
show busybox wget -q -O- http://127.0.0.1:8080/index.html
show nft list chain inet quilt published

step "Stop and remove"
show quiltctl stop -t 2 web
show quiltctl rm -f web hello site
show quiltctl ps -a
