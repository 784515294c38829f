#!/bin/sh
# Build a one-file-userland rootfs tarball from Debian's busybox-static: the test and demo image.
# Usage: scripts/busybox-rootfs.sh OUT.tar
set -eu
out=$1
busybox=/bin/busybox
[ -x "$busybox" ] || { echo "busybox-rootfs: $busybox missing (apt-get install busybox-static)" >&2; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/bin" "$dir/etc" "$dir/tmp" "$dir/root" "$dir/home/user" "$dir/var" "$dir/usr"
chmod 1777 "$dir/tmp"
cp "$busybox" "$dir/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -s /bin/busybox "$dir/bin/$applet"
done
ln -s ../bin "$dir/usr/bin"
ln -s bin "$dir/sbin"
printf 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$dir/etc/passwd"
printf 'root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n' > "$dir/etc/group"
chown 1000:1000 "$dir/home/user"
tar --numeric-owner -C "$dir" -cf "$out" .
