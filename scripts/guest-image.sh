#!/usr/bin/env bash
# Build a tiny QEMU test guest from Debian packages: the Debian kernel (linux-image-amd64),
# a busybox-static initramfs holding svm-agent and its shared libraries, and an /init that
# loads the virtio modules, links /dev/virtio-ports/NAME itself (no udev) and runs a role.
#
#   scripts/guest-image.sh OUT_DIR [AGENT_BINARY]
#
# Writes OUT_DIR/vmlinuz and OUT_DIR/initrd.gz. The downloaded packages and the unpacked
# kernel are cached in $SVM_GUEST_CACHE (default /var/tmp/svm-guest-cache), so later runs
# only rebuild the initramfs (about a second).
#
# Roles (kernel command line `svm.role=NAME`, files in /roles/ of the image):
#   agent-test  start svm-agent on /dev/virtio-ports/org.svm.agent over a tmpfs at /prot,
#               open an EICAR file and a clean file, print SVM-GUEST lines, power off.
#   idle        print "SVM-GUEST: idle" and stay up (memory sweeping benchmarks).
#   mem-test    assemble a test payload in memory at run time (never on disk) and keep it
#               alive for the host's memory scan.
#   shell       (default) print a banner and power off.
set -euo pipefail

out=${1:?usage: guest-image.sh OUT_DIR [AGENT_BINARY]}
agent=${2:-}
cache=${SVM_GUEST_CACHE:-/var/tmp/svm-guest-cache}
mkdir -p "$out" "$cache"
out=$(cd "$out" && pwd)

# 1. Packages (cached). apt-get download needs the package lists; `apt-get update` runs
#    only when a download fails.
fetch() { # PKG
    local pkg=$1
    if ! ls "$cache"/"${pkg}"_*.deb >/dev/null 2>&1; then
        (cd "$cache" && { apt-get download "$pkg" >/dev/null 2>&1 || {
            apt-get update -qq && apt-get download "$pkg" >/dev/null; }; })
    fi
    ls "$cache"/"${pkg}"_*.deb | head -n1
}
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
if [[ -z $kpkg ]]; then
    apt-get update -qq
    kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
fi
[[ -n $kpkg ]] || { echo "guest-image: cannot resolve linux-image-amd64" >&2; exit 1; }
if [[ ! -d $cache/kernel-$kpkg ]]; then
    deb=$(fetch "$kpkg")
    rm -rf "$cache/kernel-tmp"
    dpkg -x "$deb" "$cache/kernel-tmp"
    mv "$cache/kernel-tmp" "$cache/kernel-$kpkg"
fi
kroot=$cache/kernel-$kpkg
if [[ ! -x $cache/busybox ]]; then
    deb=$(fetch busybox-static)
    rm -rf "$cache/bb-tmp"
    dpkg -x "$deb" "$cache/bb-tmp"
    cp "$cache/bb-tmp/bin/busybox" "$cache/busybox.tmp"
    mv "$cache/busybox.tmp" "$cache/busybox"
    rm -rf "$cache/bb-tmp"
fi
cp "$kroot"/boot/vmlinuz-* "$out/vmlinuz"

# 2. The initramfs.
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,prot,roles,lib/modules,etc,run}
cp "$cache/busybox" "$root/bin/busybox"
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_console; do
    f=$(find "$kroot"/lib/modules -name "$m.ko*" | head -n1)
    [[ -n $f ]] || { echo "guest-image: module $m not found in $kpkg" >&2; exit 1; }
    cp "$f" "$root/lib/modules/"
done
if [[ -n $agent ]]; then
    cp "$agent" "$root/bin/svm-agent"
    # The agent's shared libraries and the loader, at the same paths.
    ldd "$agent" | grep -o '/[^ ]*' | sort -u | while read -r lib; do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
fi

cat >"$root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_console; do
    for f in /lib/modules/$m.ko*; do
        case $f in
            *.xz) xz -dc "$f" >/tmp/m.ko && insmod /tmp/m.ko ;;
            *.zst) zstd -dc "$f" >/tmp/m.ko 2>/dev/null && insmod /tmp/m.ko ;;
            *) insmod "$f" ;;
        esac
    done
done
# udev would create /dev/virtio-ports/NAME; do it by hand.
mkdir -p /dev/virtio-ports
i=0
while [ $i -lt 50 ]; do
    for p in /sys/class/virtio-ports/vport*; do
        [ -e "$p/name" ] || continue
        n=$(cat "$p/name")
        [ -n "$n" ] && ln -sf "/dev/$(basename "$p")" "/dev/virtio-ports/$n"
    done
    ls /dev/virtio-ports/* >/dev/null 2>&1 && break
    i=$((i + 1))
    sleep 0.1
done
role=shell
for a in $(cat /proc/cmdline); do
    case $a in svm.role=*) role=${a#svm.role=} ;; esac
done
echo "SVM-GUEST: booted role=$role ports=$(ls /dev/virtio-ports 2>/dev/null | tr '\n' ' ')"
if [ -x "/roles/$role" ]; then
    "/roles/$role"
else
    echo "SVM-GUEST: no role $role"
fi
echo "SVM-GUEST: done"
sync
poweroff -f
EOF

cat >"$root/roles/agent-test" <<'EOF'
#!/bin/sh
# The agent's end-to-end check inside the guest. The host reads these lines from the
# serial console.
mount -t tmpfs -o size=16m tmpfs /prot
printf '%s' 'X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*' >/prot/eicar.com
echo "hello from the guest" >/prot/clean.txt
svm-agent --connect virtio:/dev/virtio-ports/org.svm.agent --mount /prot --open-perm \
    --deadline-ms 5000 --fallback deny 2>/tmp/agent.log &
pid=$!
i=0
until grep -q 'ready:' /tmp/agent.log 2>/dev/null; do
    i=$((i + 1))
    if [ $i -gt 300 ]; then echo "SVM-GUEST: agent not ready"; cat /tmp/agent.log; exit 1; fi
    sleep 0.1
done
sed 's/^/SVM-GUEST: agent: /' /tmp/agent.log
# The first verdicts may come while the host is still attaching to the port: retry a clean
# open until the SVM answers it, for at most 60 s.
i=0
until cat /prot/clean.txt >/dev/null 2>&1; do
    i=$((i + 1))
    if [ $i -gt 60 ]; then break; fi
    sleep 1
done
if out=$(cat /prot/clean.txt 2>&1); then echo "SVM-GUEST: clean=OK $out"; else echo "SVM-GUEST: clean=FAILED $out"; fi
if out=$(cat /prot/eicar.com 2>&1); then echo "SVM-GUEST: eicar=OPENED"; else echo "SVM-GUEST: eicar=DENIED $out"; fi
# busybox picks the applet from argv[0]: a copy named `true` runs `true`.
cp /bin/busybox /prot/true && chmod +x /prot/true
if /prot/true; then echo "SVM-GUEST: exec-clean=OK"; else echo "SVM-GUEST: exec-clean=FAILED"; fi
# EICAR first (the default set anchors it at offset 0), executable: the exec is refused.
printf '%s\necho ran\n' 'X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*' >/prot/bad
chmod +x /prot/bad
out=$(/prot/bad 2>&1)
case $out in
    *"not permitted"*) echo "SVM-GUEST: exec-infected=DENIED" ;;
    *) echo "SVM-GUEST: exec-infected=RAN $out" ;;
esac
kill -USR1 $pid
sleep 0.5
kill $pid
sleep 0.5
sed "s/^/SVM-GUEST: agent: /" /tmp/agent.log
# A restarted agent: its new HELLO ends the SVM's old session; the SVM reconnects to the
# port and the agent's retries get a new one. A new infected file is refused again.
printf '%s  ' 'X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*' >/prot/eicar2.com
svm-agent --connect virtio:/dev/virtio-ports/org.svm.agent --mount /prot --open-perm \
    --deadline-ms 5000 --fallback allow 2>/tmp/agent2.log &
pid=$!
i=0
until grep -q 'ready:' /tmp/agent2.log 2>/dev/null || [ $i -gt 300 ]; do i=$((i + 1)); sleep 0.1; done
i=0
while cat /prot/eicar2.com >/dev/null 2>&1 && [ $i -lt 60 ]; do i=$((i + 1)); sleep 1; done
if cat /prot/eicar2.com >/dev/null 2>&1; then echo "SVM-GUEST: restart-eicar=OPENED"; else echo "SVM-GUEST: restart-eicar=DENIED"; fi
kill $pid
sleep 0.5
sed "s/^/SVM-GUEST: agent2: /" /tmp/agent2.log
EOF
cat >"$root/roles/mem-test" <<'EOF'
#!/bin/sh
# Memory introspection check: a test payload is assembled in this shell's memory at run
# time (it never exists on disk or in this script in one piece), then kept alive until the
# host powers the guest off or 300 s pass.
a='svm-memory-test-'
b='payload-'
c='0123456789abcdef'
p="$a$b$c"
echo "SVM-GUEST: payload ready (${#p} bytes)"
i=0
while [ $i -lt 300 ]; do
    [ -n "$p" ] || break
    i=$((i + 1))
    sleep 1
done
EOF
cat >"$root/roles/idle" <<'EOF'
#!/bin/sh
# An idle guest (benchmarks of memory sweeping): stays up until the host powers it off.
echo "SVM-GUEST: idle"
while :; do sleep 3600; done
EOF
chmod +x "$root/init" "$root/roles/agent-test" "$root/roles/mem-test" "$root/roles/idle"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1 >"$out/initrd.gz.tmp")
mv "$out/initrd.gz.tmp" "$out/initrd.gz"
echo "guest-image: $out/vmlinuz ($kpkg) $out/initrd.gz ($(du -h "$out/initrd.gz" | cut -f1))"
