#!/usr/bin/env bash
# fresh-check.sh - does glassbreak's README promise hold on a FRESH Debian machine?
#
#   README: "On a fresh Debian/Ubuntu machine, as root, in a clone of this repository:
#            make demo; make test"   (both do the whole set-up: scripts/setup.sh)
#
# The machines we develop on have many packages installed by hand, so a green `make test` there
# proves nothing about a fresh machine. This script makes a fresh machine out of a directory:
#
#  1. a minimal Debian root of THIS host's release (/etc/os-release: debian bookworm here), made
#     by debootstrap once (--variant minbase; "-" for debootstrap's default, required+important)
#     and cached as a tarball (cache/; --refresh-cache rebuilds it); every check unpacks a pristine copy
#     (roots/NAME). At most --keep-roots roots (default 2, this one included) are kept on disk.
#  2. a clean `git clone` of --repo at --commit (default: this checkout's HEAD) in --workdir of that
#     root (default /srv/glassbreak, a directory other users can read: the demo and the tests
#     run glassbreak as other users; --workdir /root/glassbreak checks a clone in root's home):
#     tracked files only, never the host's .venv, caches or build products.
#  3. the root gets what a real machine has from its kernel and boot: / as a mount point (a
#     bind of the root onto itself: `ip netns exec`/`ip -n` need it), /proc (new), /sys, /dev,
#     /dev/pts, a private /dev/shm and /run (tmpfs), tracefs, cgroup2 (a private sub-tree, see
#     below), and bind mounts of /sys/kernel/{btf,debug}, /sys/fs/bpf where the host has them as
#     separate mounts; plus this workplace's network plumbing (not project dependencies):
#     /etc/resolv.conf, extra CA certificates the host trusts (for a TLS-inspecting proxy;
#     PIP_CERT as on the host) and the host's apt proxy settings; and an /etc/hostname, as any installed
#     machine has (a test runs `find /etc/hostname`). The kernel is shared: /lib/modules of
#     the root starts empty, and setup.sh must install and link kernel headers itself.
#  4. inside it, as root, with GLASSBREAK_REQUIRE_KERNEL=1, CI=true and an otherwise empty
#     environment: the --prereqs (default "make": see below), then `make demo`, then `make test`
#     (each with its own log, exit code and wall time; `make test` runs even if the demo fails).
#     pytest gets PYTEST_ADDOPTS="--durations=15 --junitxml=..." (not a change to the repo).
#
#  "make" is not in a minimal Debian (nor in a standard install), and `make demo` cannot install
#  it. --prereqs is what the README must tell people to install by hand first; set
#  --prereqs "" to check the bare promise.
#
# Isolation and clean-up (nothing is ever killed by name):
#  * everything runs in a new mount namespace (unshare --mount --propagation private): the
#    bind mounts never appear in the host's mount table, and the namespace's mounts go away
#    with its last process. On top of that a trap unmounts them all in reverse order, and the
#    script checks the host's /proc/mounts afterwards.
#  * everything runs in a dedicated cgroup v2, <cgroup2>/fresh-check/NAME, also made the root
#    of a new cgroup namespace, and the root's /sys/fs/cgroup/unified is that sub-tree: what
#    glassbreak creates (glassbreak/<run>) stays inside it, and cgroup.kill on it ends every
#    process the check started (daemons and double forks included), and nothing else.
#    As a second check, any process whose /proc/PID/root lies inside the root is reported and
#    killed by pid. A check that was SIGKILLed leaves its cgroup behind: the next check (one at
#    a time, under a lock) ends its processes with cgroup.kill and removes it.
#    Processes still in the check's cgroup right after a step are listed in
#    leftover-processes.txt (recorded, not killed: a real machine would keep them).
#  * service starts in package scripts are refused (/usr/sbin/policy-rc.d exits 101), as in any
#    chroot: a real machine would start redis-server on :6379, and the tests use their own.
#
# Usage (as root):
#   ./fresh-check.sh [--repo PATH] [--commit REV] [--name NAME] [--prereqs "PKGS"] [--workdir DIR]
#                    [--steps "demo test"] [--timeout SECS] [--keep-roots N] [--refresh-cache]
#                    [--variant minbase|buildd|-] [--mirror URL] [--no-pytest-opts]
#                    [--keep-root|--discard-root]
# Outputs: runs/NAME/{summary.txt,prereqs.log,demo.log,test.log,junit.xml,durations.txt,...}
#          (logs are prefixed with seconds since the step's start). Exit 0 when every step
#          passed, 1 when a step failed, 2 when the harness itself failed.
# Idempotent: the cache is reused, a rerun with the same NAME replaces that run's root and logs.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
BASE=${FRESH_BASE:-/var/tmp/glassbreak-fresh}  # cache/, roots/, runs/ (outside the checkout)
CG2=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)
CGPARENT="$CG2/fresh-check"

log() { printf '[fresh-check %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }

# ---------------------------------------------------------------------------------------------
# Inner part: runs in the new mount + cgroup namespace (re-invoked by the outer part below).
# ---------------------------------------------------------------------------------------------
inner() {
  # globals, not locals: the EXIT trap runs after this function has returned
  R=$1 CG=$2 LOGDIR=$3
  MOUNTED=()
  m() {  # m TARGET MOUNT-ARGS... : mount and remember it for the teardown
    local tgt=$1; shift
    mount "$@" "$tgt" || die "mount $* $tgt failed"
    MOUNTED+=("$tgt")
  }
  kill_payload() {  # every process the steps started (cgroups below $CG; this shell is in $CG)
    local d
    for d in "$CG"/*/; do
      [ -e "$d/cgroup.kill" ] && echo 1 >"$d/cgroup.kill" 2>/dev/null
    done
    local i
    for i in $(seq 50); do
      [ -z "$(find "$CG" -mindepth 2 -name cgroup.procs -exec cat {} + 2>/dev/null)" ] && return 0
      sleep 0.1
    done
    log "WARNING: processes still alive below $CG after cgroup.kill"
  }
  teardown_inner() {
    local rc=$? i
    kill_payload
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
      umount "${MOUNTED[i]}" 2>/dev/null || umount -l "${MOUNTED[i]}" ||
        log "WARNING: could not unmount ${MOUNTED[i]}"
    done
    if grep -q " $R/" /proc/self/mounts || grep -q " $R " /proc/self/mounts; then
      log "WARNING: mounts left inside the namespace:"; grep -E " ${R}(/| )" /proc/self/mounts >&2
    fi
    exit "$rc"
  }
  trap teardown_inner EXIT
  trap 'exit 130' INT TERM

  # Refuse to mount anything unless this namespace's mounts cannot propagate to the host.
  [ "$(findmnt -no PROPAGATION /)" = private ] || die "mount namespace is not private"

  # the root itself becomes a mount point, as / is on a real machine (`ip netns exec` and
  # `ip -n` do `mount --make-rslave /`, which fails with EINVAL on a plain directory)
  m "$R" --bind "$R"
  m "$R/proc" -t proc -o nosuid,nodev,noexec proc
  m "$R/sys" --bind /sys
  # cgroups: the host's v1 hierarchies (as a machine of this kind has them), and cgroup2 as the
  # root of our cgroup namespace, i.e. our private sub-tree.
  m "$R/sys/fs/cgroup" -t tmpfs -o mode=755,nosuid,nodev,noexec cgroup-root
  local line h
  while read -r line; do
    h=${line#/sys/fs/cgroup/}
    mkdir -p "$R/sys/fs/cgroup/$h"; m "$R/sys/fs/cgroup/$h" --bind "/sys/fs/cgroup/$h"
  done < <(awk '$3 == "cgroup" && $2 ~ "^/sys/fs/cgroup/" {print $2}' /proc/mounts)
  mkdir -p "$R/sys/fs/cgroup/unified"
  m "$R/sys/fs/cgroup/unified" -t cgroup2 -o nosuid,nodev,noexec cgroup2
  for h in /sys/kernel/tracing /sys/kernel/debug /sys/kernel/btf /sys/fs/bpf /sys/kernel/security; do
    if mountpoint -q "$h"; then m "$R$h" --bind "$h"; fi
  done
  m "$R/dev" --bind /dev
  m "$R/dev/pts" --bind /dev/pts
  m "$R/dev/shm" -t tmpfs -o mode=1777,nosuid,nodev shm
  m "$R/run" -t tmpfs -o mode=755,nosuid,nodev run
  mkdir -m 1777 "$R/run/lock"
  touch "$R/etc/resolv.conf"
  m "$R/etc/resolv.conf" --bind -o ro /etc/resolv.conf
  mount -o remount,bind,ro "$R/etc/resolv.conf" 2>/dev/null || true

  mkdir -p "$CG/payload"
  local -a ENVV=(HOME=/root USER=root LOGNAME=root SHELL=/bin/bash TERM=dumb
                 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
                 GLASSBREAK_REQUIRE_KERNEL=1 CI=true
                 PIP_CERT=/etc/ssl/certs/ca-certificates.crt)
  [ "${PYTEST_OPTS:-1}" = 1 ] &&
    ENVV+=("PYTEST_ADDOPTS=--durations=15 --junitxml=/root/fresh-check/junit.xml")

  stamp() {  # prefix each line with seconds since $1 (EPOCHREALTIME without the dot)
    local t0=$1 line t d
    while IFS= read -r line || [ -n "$line" ]; do
      t=${EPOCHREALTIME/./}; d=$(((t - t0) / 100000))
      printf '[%5d.%ds] %s\n' $((d / 10)) $((d % 10)) "$line"
    done
  }
  run_step() {  # run_step NAME COMMAND : one step in the chroot, logged, timed
    local name=$1 cmd=$2 t0 t1 rc
    log "step $name: $cmd"
    t0=${EPOCHREALTIME/./}
    ( echo "$BASHPID" >"$CG/payload/cgroup.procs" || exit 2
      exec timeout -k 30 "$STEP_TIMEOUT" chroot "$R" /usr/bin/env -i "${ENVV[@]}" \
        /bin/bash -c "cd '$WORKDIR' && $cmd" ) </dev/null 2>&1 | stamp "$t0" >"$LOGDIR/$name.log"
    rc=${PIPESTATUS[0]}
    t1=${EPOCHREALTIME/./}
    local secs; secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", (b - a) / 1e6}')
    printf '%s rc=%s wall=%ss\n' "$name" "$rc" "$secs" >>"$LOGDIR/steps.txt"
    # what the step left running (a real machine would keep it; we only record it)
    leftovers() {
      local f p
      find "$CG" -mindepth 2 -name cgroup.procs | while read -r f; do
        for p in $(cat "$f" 2>/dev/null); do
          printf '  pid %s [%s] %s ppid %s [%s] cgroup %s: %s\n' "$p" \
            "$(cat "/proc/$p/comm" 2>/dev/null)" \
            "$(awk '/^State:/ {print $2 $3}' "/proc/$p/status" 2>/dev/null)" \
            "$(awk '/^PPid:/ {print $2}' "/proc/$p/status" 2>/dev/null)" \
            "$(cat "/proc/$(awk '/^PPid:/ {print $2}' "/proc/$p/status" 2>/dev/null)/comm" 2>/dev/null)" \
            "${f#"$CG"}" "$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)"
        done
      done
    }
    local left; left=$(leftovers)
    if [ -n "$left" ]; then
      sleep 2
      { echo "right after $name:"; echo "$left"; echo "2 s later:"; leftovers
      } >>"$LOGDIR/leftover-processes.txt"
    fi
    log "step $name: rc=$rc wall=${secs}s"
  }

  if [ -n "$PREREQS" ]; then
    run_step prereqs "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $PREREQS"
  fi
  local s
  for s in $STEPS; do run_step "$s" "make $s"; done
}

if [ "${1:-}" = --inner ]; then
  shift; inner "$@"; exit $?
fi

# ---------------------------------------------------------------------------------------------
# Outer part (host mount and cgroup namespaces).
# ---------------------------------------------------------------------------------------------
REPO=$(cd "$HERE/.." && pwd) COMMIT=HEAD NAME="" PREREQS=make STEPS="demo test" STEP_TIMEOUT=3600
KEEP_ROOTS=2 REFRESH=0 VARIANT=minbase MIRROR=http://deb.debian.org/debian PYTEST_OPTS=1
KEEP_ROOT=1 WORKDIR=/srv/glassbreak
while [ $# -gt 0 ]; do
  case $1 in
    --repo) REPO=$2; shift ;;
    --commit) COMMIT=$2; shift ;;
    --name) NAME=$2; shift ;;
    --prereqs) PREREQS=$2; shift ;;
    --steps) STEPS=$2; shift ;;
    --workdir) WORKDIR=$2; shift ;;
    --timeout) STEP_TIMEOUT=$2; shift ;;
    --keep-roots) KEEP_ROOTS=$2; shift ;;
    --refresh-cache) REFRESH=1 ;;
    --variant) VARIANT=$2; shift ;;
    --mirror) MIRROR=$2; shift ;;
    --no-pytest-opts) PYTEST_OPTS=0 ;;
    --discard-root) KEEP_ROOT=0 ;;
    --keep-root) KEEP_ROOT=1 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$SELF" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, mounts, chroot)"
[ -n "$CG2" ] && [ -e "$CG2/cgroup.procs" ] || die "no cgroup2 mount on this host"
[ "$KEEP_ROOTS" -ge 1 ] 2>/dev/null || die "--keep-roots must be >= 1"
case $WORKDIR in /*[!/]*) ;; *) die "--workdir must be an absolute path" ;; esac
export PREREQS STEPS STEP_TIMEOUT PYTEST_OPTS WORKDIR

OS_ID=$(. /etc/os-release && echo "${ID:-}")
CODENAME=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
OS_PRETTY=$(. /etc/os-release && echo "${PRETTY_NAME:-}")
[ -n "$CODENAME" ] || die "no VERSION_CODENAME in /etc/os-release"
[ "$OS_ID" = debian ] || die "this host is ${OS_ID:-?}, not Debian"
ARCH=$(dpkg --print-architecture)
mkdir -p "$BASE/cache" "$BASE/roots" "$BASE/runs"
exec 9>"$BASE/.fresh-check.lock"
flock -n 9 || die "another fresh-check is running (lock $BASE/.fresh-check.lock)"

# A cgroup left in $CGPARENT belongs to a check whose outer script was SIGKILLed (we hold the
# lock, which the check's own processes do not inherit, so no other check runs): only this
# script puts processes there, so end them and remove it.
for stale in "$CGPARENT"/*/; do
  [ -e "$stale/cgroup.kill" ] || continue
  log "ending the processes of an interrupted check: ${stale%/}"
  echo 1 >"$stale/cgroup.kill"
  for _ in $(seq 50); do grep -q '^populated 0' "$stale/cgroup.events" && break; sleep 0.1; done
  find "$stale" -depth -type d -exec rmdir {} + 2>/dev/null
done

for tool in debootstrap unshare findmnt git; do
  if ! command -v "$tool" >/dev/null; then
    log "installing $tool on the host (the harness's own tool)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "$([ "$tool" = findmnt ] && echo mount || echo "$tool")" >/dev/null || die "cannot install $tool"
  fi
done

T_ALL0=${EPOCHREALTIME/./}
secs_since() { awk -v a="$1" -v b="${EPOCHREALTIME/./}" 'BEGIN {printf "%.1f", (b - a) / 1e6}'; }

# 1. the pristine root, cached ------------------------------------------------------------------
TARBALL="$BASE/cache/debian-$CODENAME-$ARCH-$VARIANT.tar"
if [ "$REFRESH" = 1 ] || [ ! -s "$TARBALL" ]; then
  t0=${EPOCHREALTIME/./}
  tmp="$BASE/cache/.debootstrap.$$"
  rm -rf --one-file-system "$tmp"; mkdir -p "$tmp"
  log "debootstrap --variant=$VARIANT $CODENAME ($ARCH) from $MIRROR (once; cached in $TARBALL)"
  vopt=(); [ "$VARIANT" != - ] && vopt=(--variant="$VARIANT")
  debootstrap "${vopt[@]}" --arch "$ARCH" "$CODENAME" "$tmp" "$MIRROR" \
    >"$BASE/cache/debootstrap.log" 2>&1 || { rm -rf --one-file-system "$tmp"; die "debootstrap failed: $BASE/cache/debootstrap.log"; }
  # A fresh Debian machine's apt sources: the release, its updates and security (as the host).
  rm -f "$tmp/etc/apt/sources.list"
  cat >"$tmp/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $CODENAME $CODENAME-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: $CODENAME-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  # what the Debian installer writes and debootstrap does not; the host's resolv.conf/hostname
  # that debootstrap copies in are not part of the pristine root
  rm -f "$tmp/etc/resolv.conf"
  [ -s "$tmp/etc/hosts" ] || printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$tmp/etc/hosts"
  tar --numeric-owner --xattrs --acls -C "$tmp" -cf "$TARBALL.tmp" . || die "tar of the root failed"
  mv -f "$TARBALL.tmp" "$TARBALL"
  rm -rf --one-file-system "$tmp"
  log "cached $(du -h "$TARBALL" | cut -f1) in $(secs_since "$t0")s"
fi

# 2. a new root (old ones pruned) ----------------------------------------------------------------
root_busy() {  # a root is busy while anything is mounted under it or a process lives in it
  local r=$1 p
  grep -qE " $r(/| )" /proc/mounts && return 0
  for p in /proc/[0-9]*; do
    case "$(readlink "$p/root" 2>/dev/null)" in "$r"|"$r"/*) return 0 ;; esac
  done
  return 1
}
remove_root() {
  local r=$1
  if root_busy "$r"; then log "WARNING: $r is in use; not removing it"; return 1; fi
  rm -rf --one-file-system "$r"
}
COMMIT_ID=$(git -C "$REPO" rev-parse --verify "$COMMIT^{commit}") || die "no commit $COMMIT in $REPO"
[ -n "$NAME" ] || NAME="$(date +%Y%m%d-%H%M%S)-${COMMIT_ID:0:8}"
case $NAME in ""|*[!A-Za-z0-9._-]*) die "--name: letters, digits, . _ - only" ;; esac
ROOT="$BASE/roots/$NAME"
LOGDIR="$BASE/runs/$NAME"
[ -d "$ROOT" ] && { remove_root "$ROOT" || die "$ROOT is busy"; }
# keep at most KEEP_ROOTS roots, this one included: prune the oldest (by ctime: tar restores
# the mtime of the root directory from the pristine tarball)
mapfile -t OLD < <(ls -1dtc "$BASE"/roots/*/ 2>/dev/null | sed 's:/$::' | tail -n +"$KEEP_ROOTS")
for r in "${OLD[@]}"; do log "pruning old root $r"; remove_root "$r"; done
rm -rf "$LOGDIR"; mkdir -p "$LOGDIR"

t0=${EPOCHREALTIME/./}
mkdir -p "$ROOT"
tar --numeric-owner --xattrs --acls -C "$ROOT" -xpf "$TARBALL" || die "unpacking the root failed"
T_UNPACK=$(secs_since "$t0")
# the host's network plumbing (see the header): extra CAs, apt's proxy settings; no services
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
  mkdir -p "$ROOT/usr/local/share/ca-certificates" "$ROOT/etc/ssl/certs"
  cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
  cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
fi
# apt settings that are about reaching the mirrors (proxies, date checks), never sources
for conf in /etc/apt/apt.conf.d/*; do
  [ -f "$conf" ] && grep -qiE 'proxy|Check-Valid-Until|Check-Date|Acquire::' "$conf" &&
    cp "$conf" "$ROOT/etc/apt/apt.conf.d/"
done
# a machine has a hostname file (debootstrap copies the host's; the Debian installer writes one)
echo fresh-check >"$ROOT/etc/hostname"
printf '#!/bin/sh\n# fresh-check: no service starts in this root\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
chmod 755 "$ROOT/usr/sbin/policy-rc.d"
# the repository: a clean clone at the commit (tracked files only)
mkdir -p "$(dirname "$ROOT$WORKDIR")"
git clone -q --no-hardlinks "$REPO" "$ROOT$WORKDIR" || die "git clone failed"
git -C "$ROOT$WORKDIR" -c advice.detachedHead=false checkout -q "$COMMIT_ID" || die "checkout failed"
mkdir -p "$ROOT/root/fresh-check"
{
  echo "repo=$REPO commit=$COMMIT_ID ($(git -C "$REPO" log -1 --format=%s "$COMMIT_ID"))"
  echo "host: $OS_PRETTY, kernel $(uname -r); root: debootstrap --variant=$VARIANT $CODENAME $ARCH"
  echo "prereqs=\"$PREREQS\" steps=\"$STEPS\" workdir=$WORKDIR"
} >"$LOGDIR/summary.txt"

# 3. run it, in a dedicated cgroup + new mount and cgroup namespaces --------------------------
CG="$CGPARENT/$NAME"
cleanup_outer() {
  # everything the check started is in $CG: end it all, then check nothing is left
  if [ -d "$CG" ]; then
    echo 1 >"$CG/cgroup.kill" 2>/dev/null
    for _ in $(seq 100); do
      grep -q '^populated 0' "$CG/cgroup.events" 2>/dev/null && break; sleep 0.1
    done
  fi
  local p pids=""
  for p in /proc/[0-9]*; do
    case "$(readlink "$p/root" 2>/dev/null)" in "$ROOT"|"$ROOT"/*) pids="$pids ${p#/proc/}" ;; esac
  done
  if [ -n "$pids" ]; then
    log "WARNING: processes still rooted in $ROOT:$pids - killing them by pid"
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null
  fi
  [ -d "$CG" ] && find "$CG" -depth -type d -exec rmdir {} + 2>/dev/null
  [ -d "$CG" ] && log "WARNING: could not remove cgroup $CG"
  if grep -qE " $ROOT(/| )" /proc/mounts; then
    log "ERROR: mounts left under $ROOT on the host:"; grep -E " $ROOT(/| )" /proc/mounts >&2
    MOUNTS_LEFT=1
  fi
}
MOUNTS_LEFT=0
trap 'cleanup_outer' EXIT
trap 'exit 130' INT TERM
mkdir -p "$CGPARENT"; mkdir "$CG" || die "cannot create $CG"
log "root $ROOT (unpacked in ${T_UNPACK}s), commit ${COMMIT_ID:0:12}, logs $LOGDIR"
t0=${EPOCHREALTIME/./}
# in the background + wait: a SIGINT/SIGTERM then interrupts the wait at once (bash would run
# the trap only after a foreground child ended) and the EXIT trap's cgroup.kill ends the check
bash -c 'echo $$ >"$1/cgroup.procs" && exec unshare --mount --cgroup --propagation private -- \
  "$2" --inner "$3" "$1" "$4"' _ "$CG" "$SELF" "$ROOT" "$LOGDIR" </dev/null 9>&- &
wait "$!"
INNER_RC=$?
T_RUN=$(secs_since "$t0")
cleanup_outer; trap - EXIT
cp "$ROOT/root/fresh-check/junit.xml" "$LOGDIR/junit.xml" 2>/dev/null

# 4. report ------------------------------------------------------------------------------------
FAIL=0
{
  echo "timing: unpack ${T_UNPACK}s, namespace run ${T_RUN}s, whole check $(secs_since "$T_ALL0")s"
  [ -f "$LOGDIR/steps.txt" ] && cat "$LOGDIR/steps.txt"
  if [ -f "$LOGDIR/test.log" ]; then
    echo "pytest: $(grep -aE '[0-9]+ (passed|failed|error)' "$LOGDIR/test.log" | tail -n 1 | sed 's/^\[[ 0-9.]*s\] //')"
    sed 's/^\[[ 0-9.]*s\] //' "$LOGDIR/test.log" |
      awk '/slowest [0-9]+ durations/ {on = 1; next} on && !/^[0-9.]+s (call|setup|teardown) / {exit} on' \
      >"$LOGDIR/durations.txt"
    grep -aE '^\[[ 0-9.]*s\] (FAILED|ERROR|SKIPPED) ' "$LOGDIR/test.log" | sed 's/^\[[ 0-9.]*s\] //' \
      >"$LOGDIR/failures.txt"
  fi
  if [ -f "$LOGDIR/junit.xml" ]; then
    python3 - "$LOGDIR/junit.xml" <<'EOF' 2>/dev/null || echo "junit: unreadable"
import sys, xml.etree.ElementTree as ET
t = ET.parse(sys.argv[1]).getroot()
s = t if t.tag == "testsuite" else t.find("testsuite")
print("junit: tests=%s failures=%s errors=%s skipped=%s time=%ss" % tuple(
    s.get(k) for k in ("tests", "failures", "errors", "skipped", "time")))
EOF
  fi
  echo "disk: root $(du -sxh "$ROOT" 2>/dev/null | cut -f1) (cache $(du -h "$TARBALL" | cut -f1)); venv $(du -sxh "$ROOT$WORKDIR/.venv" 2>/dev/null | cut -f1)"
  [ -f "$LOGDIR/leftover-processes.txt" ] && echo "processes left running by steps: see leftover-processes.txt (all ended)"
  [ "$MOUNTS_LEFT" = 0 ] && echo "teardown: no mounts left under the root, no processes left in it"
} >>"$LOGDIR/summary.txt"
while read -r s rc _; do
  [ "$rc" = rc=0 ] || FAIL=1
done < <(cat "$LOGDIR/steps.txt" 2>/dev/null)
[ -f "$LOGDIR/steps.txt" ] || FAIL=2
[ "$INNER_RC" = 0 ] || { [ "$FAIL" = 0 ] && FAIL=2; }
[ "$MOUNTS_LEFT" = 0 ] || FAIL=2
if [ "$FAIL" = 0 ]; then echo "RESULT: PASS" >>"$LOGDIR/summary.txt"; else echo "RESULT: FAIL" >>"$LOGDIR/summary.txt"; fi
if [ "$KEEP_ROOT" = 0 ]; then remove_root "$ROOT"; fi
cat "$LOGDIR/summary.txt"
exit "$FAIL"
