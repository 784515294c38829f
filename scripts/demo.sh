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
# The same for a pipeline: prints the text as typed, then runs that very text.
show_sh() { printf '$ %s\n' "$1"; eval "$1"; }

# What the demo makes: the containers named below, the image debian-tools:demo, and two images without a name,
# busybox.tar's (a container given a tarball's path imports it) and the cached result of the setup steps. No network
# or volume: its containers use the agent's default network, "quilt".
demo_containers=(hello web site tools tools2)
tools_image=debian-tools:demo
image=$(mktemp -d)/busybox.tar
work=$(dirname "$image")
index_pid=
busybox_id=

# Removes, quietly, what this run or an interrupted earlier one made: the containers with the demo's names that run
# the demo's images (a busybox.tar in a mktemp directory, or debian-tools:demo), then those images, each only if no
# other container uses it. An earlier run's temp directory goes too. What cannot be removed stays, without a word.
remove_demo() (
    set +e
    systemctl is-active -q quilt-agent 2>/dev/null || exit 0  # not started yet: nothing made
    containers=() tarballs=() images=()
    while read -r kind what; do
        case $kind in
            container) containers+=("$what") ;;
            tarball) tarballs+=("$what") ;;
            image) images+=("$what") ;;
        esac
    done < <(python3 - "$tools_image" "${demo_containers[@]}" <<'EOF'
import json, re, subprocess, sys
tools, names = sys.argv[1], sys.argv[2:]
def listing(*args):
    done = subprocess.run(["quiltctl", *args, "--json"], capture_output=True, text=True)
    return json.loads(done.stdout) if done.returncode == 0 else []
for c in listing("ps", "-a"):
    tarball = re.fullmatch(r".*/tmp\.[A-Za-z0-9]{10}/busybox\.tar", c["Image"])
    if c["Name"] in names and (tarball or c["Image"] == tools):
        print("container", c["Name"])
        if tarball:
            print("tarball", c["Image"])
        if c.get("SetupImage"):
            print("image", c["SetupImage"])
images = listing("image", "ls", "--all")
tools_id = next((i["Id"] for i in images if tools in (i.get("Names") or [])), None)
if tools_id:
    print("image", tools_id)
    for i in images:
        if i.get("SetupBase") == tools_id:
            print("image", i["Id"])
EOF
    )
    [ ${#containers[@]} = 0 ] || quiltctl rm -f "${containers[@]}" >/dev/null 2>&1
    [ -z "$busybox_id" ] || images+=("$busybox_id")
    for what in "${tarballs[@]}"; do
        # The same tarball imported again is the same image: its id, nothing unpacked.
        [ ! -f "$what" ] || images+=("$(quiltctl image import -q "$what" 2>/dev/null)")
        [ "$(dirname "$what")" = "$work" ] || rm -rf "$(dirname "$what")"
    done
    for what in $(printf '%s\n' "${images[@]}" | sort -u); do
        quiltctl image rm "$what" >/dev/null 2>&1
    done
    exit 0
)
cleanup() {
    set +e
    [ -z "$index_pid" ] || kill "$index_pid" 2>/dev/null
    remove_demo
    rm -rf "$work"
}
trap cleanup EXIT
# Seconds since $1 (a `date +%s.%N`), for the setup part's two starts.
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f s", b - a }'; }

step "The agent, started by systemd, answers on the system bus"
show systemctl start quilt-agent
show busctl get-property org.quilt.Runtime /org/quilt/Runtime org.quilt.Runtime.Manager Version
remove_demo  # what an interrupted earlier run left, if any

step "A busybox image, built on the spot from Debian's busybox-static"
show scripts/busybox-rootfs.sh "$image"
ls -lh "$image"

step "Create and run a container with plain busctl (64 MiB memory, 50% of a CPU)"
show busctl call org.quilt.Runtime /org/quilt/Runtime org.quilt.Runtime.Manager RunContainer -- 'ssasa{sv}' \
    hello "$image" 3 /bin/sh -c 'echo "Hello from $(hostname), pid $$"; echo "a line on stderr" >&2; exit 3' \
    2 memory_max t 67108864 cpu_quota d 50
path=$(busctl call org.quilt.Runtime /org/quilt/Runtime org.quilt.Runtime.Manager GetContainer s hello | cut -d'"' -f2)
busybox_id=$(quiltctl image import -q "$image")  # the image hello's tarball became (the same tarball: the same image)
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
show_sh "quiltctl inspect site | grep -A4 '\"Addresses\"'"
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
(cd "$work" && show_sh 'grep -c GET index.log   # what pip asked the index for') || true

step "A second container with the same image and setup starts from the cached result: pip does not run"
started=$(date +%s.%N)
show quiltctl run --name tools2 "${pip_env[@]}" --setup 'pip: quilt-hello' debian-tools:demo -- \
    python3 -c 'import quilt_hello; print(quilt_hello.hello(), "(cached)")'
echo "(cached start: $(since "$started"))"
show quiltctl logs --setup tools2
(cd "$work" && show_sh 'grep -c GET index.log   # unchanged') || true
show_sh "quiltctl inspect tools2 | grep -A3 '\"Setup\"'   # its setup steps, and the cached result it started from"
setup_id=$(quiltctl inspect tools2 | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["SetupImage"])')
show quiltctl image ls --all
echo "(<none> ${busybox_id:0:12} is busybox.tar, imported without a name when hello was created from its path)"

step "Stop and remove what the demo made: its containers, then its images"
show quiltctl stop -t 2 web
show quiltctl rm -f web hello site tools tools2
show quiltctl image rm "${setup_id:0:12}" "$tools_image" "${busybox_id:0:12}"
echo "(not image prune: it removes every image without a name that no container uses, not only the demo's)"
show quiltctl ps -a
show quiltctl image ls --all
show quiltctl volume ls
show quiltctl network ls
echo "(quilt is the agent's default network: it stays)"
