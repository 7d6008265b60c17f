#!/usr/bin/env bash
# Provision the glassbreak VM (run by Vagrant as root; safe to run again).
#
# 1. a kernel and headers of the SAME version, so /lib/modules/$(uname -r)/build exists for bcc;
# 2. bcc (python3-bpfcc, bpfcc-tools), redis-server and the build tools;
# 3. `make setup` in the repository (venv, bcc linked in, tracefs, cgroup2).
#
# If the box's kernel has no headers left in the archive (Debian removes the headers of an old
# kernel ABI after a point release), step 1 installs the current kernel + headers pair and asks
# for ONE reboot: `vagrant reload --provision`. Provisioning then finishes on the new kernel.
set -euo pipefail
DIR=${GLASSBREAK_DIR:-/glassbreak}
BACKPORTS=${GLASSBREAK_VM_BACKPORTS:-0}
export DEBIAN_FRONTEND=noninteractive
say() { printf '[provision] %s\n' "$*"; }
apt_install() { apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }

[ "$(id -u)" = 0 ] || { echo "[provision] must run as root (Vagrant runs it privileged)" >&2; exit 1; }
ARCH=$(dpkg --print-architecture)
KREL=$(uname -r)

SUITE_OPT=()
if [ "$BACKPORTS" = 1 ]; then
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
  list=/etc/apt/sources.list.d/backports.list
  if [ ! -f "$list" ]; then
    say "enabling ${codename}-backports (GLASSBREAK_VM_BACKPORTS=1)"
    echo "deb http://deb.debian.org/debian ${codename}-backports main" > "$list"
  fi
  SUITE_OPT=(-t "${codename}-backports")
fi

say "updating the package index"
apt-get update -qq

# --- 1. kernel and headers of one version ----------------------------------------------------
# The metapackages pull the current kernel ABI and ITS headers from the same suite, so they match.
say "installing linux-image-$ARCH + linux-headers-$ARCH (same version)"
apt_install "${SUITE_OPT[@]}" "linux-image-$ARCH" "linux-headers-$ARCH"

# Headers for the kernel running right now, if the archive still has them (no reboot needed).
if [ ! -e "/lib/modules/$KREL/build/include" ]; then
  if apt-cache show "linux-headers-$KREL" >/dev/null 2>&1; then
    say "installing linux-headers-$KREL for the running kernel"
    apt_install "linux-headers-$KREL" || true
  fi
fi

if [ ! -e "/lib/modules/$KREL/build/include" ]; then
  newest=$(find /boot -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' | sed 's/^vmlinuz-//' \
           | sort -V | tail -n 1)
  if [ -n "$newest" ] && [ "$newest" != "$KREL" ] && [ -e "/lib/modules/$newest/build/include" ]; then
    touch /var/lib/glassbreak-needs-reboot
    say "installed kernel $newest with matching headers; the VM runs $KREL, whose headers are"
    say "no longer in the archive. Reboot into the new kernel ONCE, provisioning then finishes:"
    say ""
    say "    vagrant reload --provision"
    say ""
    exit 0
  fi
  echo "[provision] ERROR: no kernel headers for the running kernel $KREL and no newer kernel" >&2
  echo "[provision] with headers was installed. Check 'apt-cache policy linux-headers-$ARCH'," >&2
  echo "[provision] or try GLASSBREAK_VM_BACKPORTS=1 vagrant provision." >&2
  exit 1
fi
rm -f /var/lib/glassbreak-needs-reboot

img_ver=$(dpkg-query -W -f='${Version}' "linux-image-$KREL" 2>/dev/null \
          || dpkg-query -W -f='${Version}' "linux-image-$KREL-unsigned" 2>/dev/null || true)
hdr_ver=$(dpkg-query -W -f='${Version}' "linux-headers-$KREL" 2>/dev/null || true)
if [ -n "$img_ver" ] && [ -n "$hdr_ver" ] && [ "$img_ver" != "$hdr_ver" ]; then
  say "WARNING: kernel $KREL is $img_ver but its headers are $hdr_ver; bcc may still work"
  say "(glassbreak's BPF reads no kernel struct fields), but 'apt-get dist-upgrade' and a"
  say "'vagrant reload' give a matching pair."
else
  say "kernel $KREL ${img_ver:+($img_ver) }with matching headers at /lib/modules/$KREL/build"
fi

# --- 2. bcc, redis-server, tools -------------------------------------------------------------
say "installing bcc, redis-server and build tools"
apt_install python3 python3-venv python3-bpfcc bpfcc-tools libbpfcc redis-server make git \
  rsync ca-certificates gcc libc6-dev

# The project's tests start their own redis-server on a free port; the system one is not needed.
if systemctl is-enabled redis-server >/dev/null 2>&1; then
  systemctl disable --now redis-server >/dev/null 2>&1 || true
fi

# --- 3. the project's own idempotent set-up --------------------------------------------------
if [ ! -f "$DIR/Makefile" ]; then
  echo "[provision] ERROR: $DIR/Makefile not found: is the repository synced to $DIR?" >&2
  echo "[provision] run 'vagrant rsync' (or check GLASSBREAK_VM_SYNC) and 'vagrant provision'." >&2
  exit 1
fi
say "running 'make setup' in $DIR"
make -C "$DIR" setup

say "done. Try:"
say "  vagrant ssh -c 'cd $DIR && sudo .venv/bin/glassbreak doctor'"
say "  vagrant ssh -c 'cd $DIR && sudo make test'"
