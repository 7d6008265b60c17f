#!/usr/bin/env bash
# glassbreak set-up for a fresh Debian/Ubuntu machine, as root. Idempotent: every step checks
# first and does nothing when it is already done. Called by `make setup` (and so by `make demo`,
# `make test`, `make bench`).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
say() { printf '[setup] %s\n' "$*"; }
APT_UPDATED=0
# apt-get install, after one `apt-get update` per set-up (a fresh machine has empty lists)
apt_install() {
  if [ "$APT_UPDATED" = 0 ]; then apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if [ "$(id -u)" != 0 ]; then
  echo "[setup] glassbreak's set-up needs root (apt packages, kernel headers, tracefs)." >&2
  echo "[setup] run: sudo make setup" >&2
  exit 1
fi

# 0. The demo and the tests run glassbreak from this checkout as other users (approvers,
# `nobody`), so they must be able to reach it. In a directory they cannot traverse (root's
# home, /root, is 0700) they fail much later with "cannot start the Python CLI ...".
if ! setpriv --reuid=65534 --regid=65534 --clear-groups test -r "$PWD/pyproject.toml"; then
  echo "[setup] ERROR: other users cannot reach $PWD (a directory above it is private, e.g. /root)." >&2
  echo "[setup] the demo and the tests run glassbreak as other users: clone the repository where" >&2
  echo "[setup] they can read it, e.g. /opt/glassbreak or /srv/glassbreak." >&2
  exit 1
fi

# 1. Debian packages. python3-bpfcc gives bcc's Python bindings (the PyPI 'bcc' is NOT BPF).
# chromium: the console's browser tests drive Debian's build through Playwright (PyPI
# `playwright`, a dev dependency); no browser is ever downloaded (`playwright install` is never
# run). fonts-dejavu-core: readable text in the screenshots.
# systemd: its systemd-analyze checks deploy/glassbreak.service (minimal images lack it).
PKGS="python3 python3-venv python3-bpfcc bpfcc-tools libbpfcc libseccomp2 redis-server \
      bubblewrap firejail busybox-static iproute2 gcc libc6-dev make procps git strace \
      chromium fonts-dejavu-core systemd"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  say "installing Debian packages:$missing"
  # shellcheck disable=SC2086
  apt_install $missing
fi
# vagrant (only its 'validate' is used by the tests) and the provider Debian recommends with it.
# `vagrant validate` refuses to run without a usable provider ("No usable default provider could
# be found"): VirtualBox is not in Debian and docker's needs a running engine, but vagrant-libvirt
# is usable without libvirtd, so validate works offline and also checks the Vagrantfile's libvirt
# block. Without recommends both stay small (vagrant-libvirt adds ~14 MiB).
vmissing=""
command -v vagrant >/dev/null 2>&1 || vmissing=" vagrant"
dpkg-query -W -f='${Status}' vagrant-libvirt 2>/dev/null | grep -q "install ok installed" ||
  vmissing="$vmissing vagrant-libvirt"
if [ -n "$vmissing" ]; then
  say "installing$vmissing (for 'vagrant validate' of vagrant/Vagrantfile)"
  # shellcheck disable=SC2086
  apt_install $vmissing || say "WARNING:$vmissing could not be installed; the Vagrantfile tests will fail"
fi

# 2. Kernel headers where bcc looks: /lib/modules/$(uname -r)/build and source. These machines
# run a custom kernel without headers; Debian's linux-headers-amd64 works, because glassbreak's
# BPF C reads only tracepoint args and helpers, never kernel struct fields.
KREL=$(uname -r)
if [ ! -e "/lib/modules/$KREL/build/include" ]; then
  if [ -d "/usr/src/linux-headers-$KREL" ]; then
    HDR="/usr/src/linux-headers-$KREL"
  else
    arch=$(dpkg --print-architecture)
    if ! ls -d /usr/src/linux-headers-*-"$arch" >/dev/null 2>&1; then
      say "installing linux-headers-$arch (no headers for the running kernel $KREL)"
      apt_install "linux-headers-$arch"
    fi
    HDR=$(ls -d /usr/src/linux-headers-*-"$arch" | sort -V | tail -n 1)
  fi
  say "linking kernel headers $HDR -> /lib/modules/$KREL/{build,source}"
  mkdir -p "/lib/modules/$KREL"
  ln -sfn "$HDR" "/lib/modules/$KREL/build"
  ln -sfn "$HDR" "/lib/modules/$KREL/source"
fi
# Debian splits headers: <ver>-<arch> (generated, config) includes <ver>-common (the sources);
# bcc needs `source` to be the one with include/linux/kconfig.h.
if [ ! -e "/lib/modules/$KREL/source/include/linux/kconfig.h" ]; then
  COMMON=$(sed -n 's|^include \(/usr/src/[^ ]*\)/Makefile$|\1|p' "/lib/modules/$KREL/build/Makefile" \
    2>/dev/null | head -n 1)
  if [ -n "$COMMON" ] && [ -e "$COMMON/include/linux/kconfig.h" ]; then
    say "linking kernel header sources $COMMON -> /lib/modules/$KREL/source"
    ln -sfn "$COMMON" "/lib/modules/$KREL/source"
  fi
fi

# 3. tracefs (bcc attaches tracepoints through it).
if [ ! -e /sys/kernel/tracing/events ] && [ ! -e /sys/kernel/debug/tracing/events ]; then
  say "mounting tracefs on /sys/kernel/tracing"
  mount -t tracefs tracefs /sys/kernel/tracing || say "WARNING: could not mount tracefs"
fi

# 4. The venv, on Debian's python3 (the one python3-bpfcc is built for), with the project and
# its dev dependencies; bcc linked in.
PY=/usr/bin/python3
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.glassbreak-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing glassbreak and its dev dependencies into $VENV"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null
  "$VENV/bin/pip" install -q -e '.[dev]'
  touch "$stamp"
fi
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
BCC_DIR=$("$PY" -c 'import bcc, os; print(os.path.dirname(bcc.__file__))' 2>/dev/null || true)
if [ -n "$BCC_DIR" ] && [ ! -e "$SITE/bcc" ]; then
  say "linking bcc ($BCC_DIR) into the venv"
  ln -sfn "$BCC_DIR" "$SITE/bcc"
fi
"$VENV/bin/python" -c 'import bcc' 2>/dev/null || { say "ERROR: bcc is not importable from $VENV"; exit 1; }

# 4b. Native helpers (our own C, all in native/, one Makefile): the launcher that does a
# sandboxed child's steps, the thin client (installed in front of the Python console script: it
# execs the Python CLI for everything it does not serve itself) and the native exec-gate
# responder. Rebuilt when a source is newer; without them everything still works, in Python.
make -s -C native OUT="$(cd "$VENV" && pwd)"
if ! cmp -s "$VENV/bin/glassbreak-run" "$VENV/bin/glassbreak"; then
  say "installing the native client as $VENV/bin/glassbreak (Python CLI behind it)"
  cp -f "$VENV/bin/glassbreak-run" "$VENV/bin/glassbreak.tmp"
  mv -f "$VENV/bin/glassbreak.tmp" "$VENV/bin/glassbreak"
fi

# 5. cgroup v2: glassbreak needs a cgroup2 mount with cgroup.kill.
if ! grep -q ' cgroup2 ' /proc/mounts; then
  say "mounting cgroup2 on /sys/fs/cgroup/unified"
  mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 none /sys/fs/cgroup/unified || \
    say "WARNING: could not mount cgroup2"
fi
# 6. The real-workload suite's one input from outside (bench/workloads.py, the `pytest`
# workload): a small pure-Python package's sdist with its own test suite, pinned by version and
# sha256, downloaded once into .cache/ (never at test or bench time). Without it that workload
# is n/a (and its test fails under GLASSBREAK_REQUIRE_KERNEL=1).
WL_CACHE=.cache/workloads
WL_PKG=toolz WL_VER=1.2.0
WL_SHA=9667a038e9d6ecba37995e26cb2f59ec6420b6ad8dd9677de59db9b956b08490
WL_FILE="$WL_CACHE/$WL_PKG-$WL_VER.tar.gz"
if ! echo "$WL_SHA  $WL_FILE" | sha256sum -c --status 2>/dev/null; then
  say "downloading the $WL_PKG $WL_VER sdist into $WL_CACHE (bench/workloads.py)"
  mkdir -p "$WL_CACHE"
  tmp=$(mktemp -d)
  if "$VENV/bin/pip" download -q --no-deps --no-binary :all: -d "$tmp" "$WL_PKG==$WL_VER" \
      >/dev/null 2>&1 && echo "$WL_SHA  $tmp/$WL_PKG-$WL_VER.tar.gz" | sha256sum -c --status; then
    mv -f "$tmp/$WL_PKG-$WL_VER.tar.gz" "$WL_FILE"
  else
    say "WARNING: could not download $WL_PKG==$WL_VER with sha256 $WL_SHA; the pytest workload will be n/a"
  fi
  rm -rf "$tmp"
fi
say "ready: $VENV/bin/glassbreak ($("$VENV/bin/python" --version))"
