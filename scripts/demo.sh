#!/usr/bin/env bash
# What `make demo` shows, run on a systemd host (the test host or a real one).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# Prints the command as one would type it (words with spaces or shell characters in single quotes), then runs it.
show() {
    local line='$' word
    for word in "$@"; do
        if [[ $word =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then line+=" $word"; else line+=" '${word//\'/\'\\\'\'}'"; fi
    done
    printf '%s\n' "$line"
    "$@"
}

image=$(mktemp -d)/busybox.tar
work=$(dirname "$image")
index_pid=
cleanup() {
    [ -z "$index_pid" ] || kill "$index_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
# Seconds since $1 (a `date +%s.%N`), for the setup part's two starts.
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f s", b - a }'; }

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

step "Setup commands: pip installs a package in the container before its command runs"
# A Debian image with pip, npm and gem (tests/setupimage.py; `make demo` builds it beforehand, since the test host
# has no network) and a pip index of our own (tests/packageindex.py) served on the host's side of the network.
setup_image=$(python3 tests/setupimage.py path)
[ -f "$setup_image" ] || python3 tests/setupimage.py build >/dev/null
show quiltctl image import -q "$setup_image" debian-tools:demo
gateway=$(quiltctl network inspect quilt | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["Gateway"])')
port=$(python3 -c 'from tests.packageindex import free_port; print(free_port())')
python3 tests/packageindex.py build "$work/index" "http://$gateway:$port" >/dev/null
python3 tests/packageindex.py serve "$work/index" "$port" >/dev/null 2>"$work/index.log" &
index_pid=$!
pip_env=(-e "PIP_INDEX_URL=http://$gateway:$port/simple/" -e "PIP_TRUSTED_HOST=$gateway")
sleep 0.3
started=$(date +%s.%N)
show quiltctl run --name tools "${pip_env[@]}" --setup 'pip: quilt-hello' debian-tools:demo -- quilt-hello-py
echo "(first start, pip ran: $(since "$started"))"
show quiltctl logs --setup tools
show journalctl -u quilt-tools.scope -t tools/setup --no-pager -o short-precise
printf '$ grep -c GET index.log   # what pip asked the index for\n'; grep -c GET "$work/index.log" || true

step "A second container with the same image and setup starts from the cached result: pip does not run"
started=$(date +%s.%N)
show quiltctl run --name tools2 "${pip_env[@]}" --setup 'pip: quilt-hello' debian-tools:demo -- \
    python3 -c 'import quilt_hello; print(quilt_hello.hello(), "(cached)")'
echo "(cached start: $(since "$started"))"
show quiltctl logs --setup tools2
printf '$ grep -c GET index.log   # unchanged\n'; grep -c GET "$work/index.log" || true
printf '$ quiltctl inspect tools2   # its Setup, and the SetupImage it started from\n'
quiltctl inspect tools2 | python3 -c 'import json, sys; p = json.load(sys.stdin)[0]; print(p["Setup"], p["SetupImage"])'
show quiltctl image ls --all

step "Stop and remove; image prune clears the cached setup results no container uses"
show quiltctl stop -t 2 web
show quiltctl rm -f web hello site tools tools2
show quiltctl ps -a
show quiltctl image prune
show quiltctl image ls --all
