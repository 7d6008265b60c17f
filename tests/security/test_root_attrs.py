"""A root run's chmod, chown and utime (sandbox.run.attrgate): performed by the supervisor on
files the run may write, refused and recorded everywhere else, on the real kernel, as root.

What ordinary root workloads need works (git, chmod +x, touch -d, chown, cp -p, install -m,
tar x). The attacks stay refused, each with a positive control in the same run and the
recorded `blocked` event: a file outside the writable trees (/etc/shadow included), glassbreak's
trust anchors (config, profile dir, state dir, install), a symlink or a hard link in the cwd, a
path component swapped between check and act, /proc magic links, setuid/setgid bits (chmod and
creation), extended attributes, special files. docs/filesystem.md, "What root loses"."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, is_root, require, run_cli

pytestmark = pytest.mark.kernel

PROFILE = """\
name: attrs
extends: base
owners: [sec-team]
exec:
  allow: [sh, dash, cat, ls, echo, printf, "true", touch, chmod, chown, chgrp, stat, ln, mv, rm,
          mkdir, mkfifo, cp, install, tar, git, "/usr/lib/git-core/*", "/usr/bin/python3*"]
  default: block
"""

# ops.py: each argument a JSON op, each result "name=0" or "name=ERRNO" on its own line
OPS = textwrap.dedent("""\
    import errno, json, os, sys
    for spec in sys.argv[1:]:
        op = json.loads(spec)
        name, args = op[0], op[1:]
        try:
            if name == "chmod":
                os.chmod(args[0], args[1])
            elif name in ("lchmod", "libc-lchmod"):  # fchmodat2 / glibc's fchmodat emulation
                import ctypes
                libc = ctypes.CDLL(None, use_errno=True)
                r = libc.syscall(452, -100, args[0].encode(), args[1], 0x100) \\
                    if name == "lchmod" else libc.fchmodat(-100, args[0].encode(), args[1], 0x100)
                if r < 0:
                    raise OSError(ctypes.get_errno(), name)
            elif name == "chown":
                os.chown(args[0], args[1], args[2])
            elif name == "lchown":
                os.lchown(args[0], args[1], args[2])
            elif name == "utime":
                os.utime(args[0], (args[1], args[1]))
            elif name == "lutime":
                os.utime(args[0], (args[1], args[1]), follow_symlinks=False)
            elif name == "fdop":  # open args[0] (O_RDONLY) and act through the fd
                fd = os.open(args[0], os.O_RDONLY)
                how = args[1]
                if how == "fchmod":
                    os.fchmod(fd, 0o777)
                elif how == "fchown":
                    os.fchown(fd, 1, 1)
                elif how == "futimens":
                    os.utime(fd, (5, 5))
                elif how == "proc-self-fd":
                    os.chmod(f"/proc/self/fd/{fd}", 0o777)
                elif how == "proc-thread-self-fd":
                    os.chown(f"/proc/thread-self/fd/{fd}", 1, 1)
            elif name == "opath-fchmod":
                fd = os.open(args[0], os.O_PATH)
                os.fchmod(fd, 0o700)
            elif name == "create":
                os.close(os.open(args[0], os.O_CREAT | os.O_WRONLY, args[1]))
            elif name == "mknod":
                os.mknod(args[0], stat.S_IFREG | args[1])
            elif name == "openat2":
                import ctypes
                libc = ctypes.CDLL(None, use_errno=True)
                how = (ctypes.c_uint64 * 3)(os.O_CREAT | os.O_WRONLY, 0o644, 0)
                if libc.syscall(437, -100, args[0].encode(), how, 24) < 0:
                    raise OSError(ctypes.get_errno(), "openat2")
            elif name == "setxattr":
                os.setxattr(args[0], args[1], b"\\x01\\x00\\x00\\x02" + bytes(16))
            elif name == "removexattr":
                os.removexattr(args[0], args[1])
            elif name == "link":
                os.link(args[0], args[1])
            elif name == "append":
                with open(args[0], "a") as f:
                    f.write("x")
            print(f"{name}=0")
        except OSError as e:
            print(f"{name}={errno.errorcode.get(e.errno, e.errno)}")
    """).replace("import errno, json, os, sys", "import errno, json, os, stat, sys")


@dataclass
class Site:
    root: Path
    work: Path  # the runs' cwd
    out: Path  # outside the writable trees: readable, not writable
    state: Path
    etc: Path
    profiles: Path

    def env(self, **extra: str) -> dict[str, str]:
        return {"PATH": "/usr/local/bin:/usr/bin:/bin", "GLASSBREAK_STATE_DIR": str(self.state),
                "GLASSBREAK_CONFIG": str(self.etc / "config.yaml"),
                "GLASSBREAK_PROFILE_PATH": str(self.profiles), "HOME": str(self.root),
                "GIT_CONFIG_NOSYSTEM": "1", **extra}

    def run(self, *argv: str, flags: tuple[str, ...] = (),
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run_cli("run", "-p", "attrs", *flags, "--", *argv, env=self.env(),
                       cwd=str(self.work), timeout=timeout)

    def ops(self, *ops: list[Any], flags: tuple[str, ...] = ()) -> dict[str, str]:
        """Run the ops in one run; {op name or its index: result}."""
        r = self.run("python3", str(self.root / "ops.py"), *(json.dumps(o) for o in ops),
                     flags=flags)
        lines = [ln for ln in r.stdout.splitlines() if "=" in ln]
        assert len(lines) == len(ops), (r.stdout, r.stderr)
        return {f"{i}:{o[0]}": ln.split("=", 1)[1] for i, (o, ln) in
                enumerate(zip(ops, lines, strict=True))}

    def events(self) -> list[dict[str, Any]]:
        p = self.state / "audit.jsonl"
        return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] \
            if p.exists() else []

    def attr_blocks(self, since: int = 0) -> list[dict[str, Any]]:
        return [e for e in self.events()[since:] if e["type"] == "blocked"
                and e["layer"] == "filesystem" and e.get("syscall")]


def snap(p: Path) -> tuple[int, int, int, int, int]:
    st = os.lstat(p)
    return (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_ctime_ns)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    require(is_root(), "the runner needs root")
    s = Site(tmp_path, tmp_path / "work", tmp_path / "out", tmp_path / "state",
             tmp_path / "etc", tmp_path / "profiles")
    for d in (s.work, s.out, s.state, s.etc, s.profiles):
        d.mkdir()
    (s.profiles / "attrs.yaml").write_text(PROFILE)
    (s.etc / "config.yaml").write_text("{}\n")
    (s.out / "f.txt").write_text("outside\n")
    (s.out / "f.txt").chmod(0o644)
    (s.root / "ops.py").write_text(OPS)
    (s.state / "keep.txt").write_text("state\n")
    return s


# ---- what root workloads need -----------------------------------------------------------------
def test_git_init_add_commit_config_as_root(site: Site) -> None:
    r = site.run("sh", "-c", "git init -q . && git config user.email a@example.com && "
                 "git config user.name agent && git config core.fileMode true && "
                 "printf 'hi\\n' > a.txt && printf '#!/bin/sh\\n' > run.sh && chmod +x run.sh && "
                 "git add a.txt run.sh && git -c maintenance.auto=false commit -qm first && "
                 "git log --format=%s && git ls-files -s run.sh && git config --list --local")
    assert r.returncode == 0, r.stderr
    assert "first" in r.stdout and "100755" in r.stdout and "user.name=agent" in r.stdout
    assert "BLOCKED" not in r.stderr, r.stderr
    assert not site.attr_blocks()
    assert stat.S_IMODE((site.work / ".git" / "config").stat().st_mode) == 0o644


def test_chmod_touch_chown_cp_install_tar_in_the_cwd(site: Site) -> None:
    r = site.run("sh", "-c", textwrap.dedent("""\
        set -e
        printf '#!/bin/sh\\necho built\\n' > build.sh; chmod +x build.sh
        touch -d 2001-02-03T04:05:06Z old.txt
        touch new.txt; chown root:root new.txt; chown 1:2 old.txt; chgrp 3 build.sh
        chmod 640 old.txt
        mkdir d; chmod 700 d
        cp -p old.txt copy.txt
        install -m 0750 build.sh bin.sh
        ln -s old.txt link; chown -h 4:5 link; touch -h -d 2002-01-01 link
        mkdir src; printf x > src/m; chmod 640 src/m; touch -d 2003-01-01 src/m
        tar cf t.tar src; rm -rf src; tar xpf t.tar
        stat -c '%n %a %u:%g %Y' build.sh old.txt new.txt d copy.txt bin.sh src/m
        stat -c '%n %u:%g %Y' link
        """))
    assert r.returncode == 0, r.stderr
    got = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    assert got["build.sh"].startswith("755 0:3 "), got
    assert got["old.txt"] == "640 1:2 981173106", got
    assert got["new.txt"].startswith("644 0:0 ")
    assert got["d"].startswith("700 ")
    assert got["copy.txt"] == "640 1:2 981173106", got  # cp -p: mode, owner and times
    assert got["bin.sh"].startswith("750 ")
    assert got["link"].startswith("4:5 1009843200"), got  # the link itself (lchown, lutimes)
    assert got["src/m"] == "640 0:0 1041379200", got  # tar x restores mode, owner and times
    assert not site.attr_blocks(), site.attr_blocks()


# ---- outside the writable trees ---------------------------------------------------------------
@pytest.mark.parametrize("op,family", [(["chmod", "{f}", 0o777], "attr.mode"),
                                       (["chown", "{f}", 1, 1], "attr.owner"),
                                       (["utime", "{f}", 5], "attr.times")])
def test_a_file_outside_the_writable_trees(site: Site, op: list[Any], family: str) -> None:
    outside = site.out / "f.txt"
    (site.work / "mine").write_text("mine\n")
    before = snap(outside)
    bad = [outside.as_posix() if a == "{f}" else a for a in op]
    good = ["mine" if a == "{f}" else a for a in op]
    res = site.ops(bad, good)
    assert list(res.values()) == ["EPERM", "0"], res
    assert snap(outside) == before, "the outside file changed"
    assert snap(site.work / "mine") != before
    [e] = site.attr_blocks()
    assert e["rule_id"] == f"filesystem.write:{outside}" and e["path"] == str(outside)
    assert e["access"] == [family] and e["verdict"] == "block" and e["escalation_id"]
    assert e["argv"][0] == "python3" and e["syscall"]


def test_etc_shadow(site: Site) -> None:
    shadow = Path("/etc/shadow")
    require(shadow.exists(), "no /etc/shadow")
    before = snap(shadow)
    st = shadow.stat()
    # its own mode, owner and times: harmless if it ever got through, visible in its ctime
    res = site.ops(["chmod", str(shadow), stat.S_IMODE(st.st_mode)],
                   ["chown", str(shadow), st.st_uid, st.st_gid],
                   ["chmod", "ops-control", 0o600], ["create", "ops-control", 0o644],
                   ["chmod", "ops-control", 0o600])
    assert list(res.values()) == ["EPERM", "EPERM", "ENOENT", "0", "0"], res
    assert snap(shadow) == before
    assert {(e["rule_id"], e["access"][0]) for e in site.attr_blocks()} == {
        ("filesystem.write:/etc/shadow", "attr.mode"),
        ("filesystem.write:/etc/shadow", "attr.owner")}


ANCHORS = {"config": "{etc}/config.yaml", "config-dir": "{etc}", "profile": "{profiles}/attrs.yaml",
           "profile-dir": "{profiles}", "state-file": "{state}/keep.txt",
           "install": str(REPO / "sandbox" / "__init__.py")}


@pytest.mark.parametrize("anchor", list(ANCHORS))
def test_trust_anchors(site: Site, anchor: str) -> None:
    p = Path(ANCHORS[anchor].format(etc=site.etc, profiles=site.profiles, state=site.state))
    before = snap(p)
    st = p.stat()
    (site.work / "mine").write_text("mine\n")
    res = site.ops(["chmod", str(p), stat.S_IMODE(st.st_mode)],
                   ["chown", str(p), st.st_uid, st.st_gid],
                   ["utime", str(p), int(st.st_mtime)],
                   ["chmod", "mine", 0o600], ["chown", "mine", 0, 0], ["utime", "mine", 7])
    assert list(res.values()) == ["EPERM"] * 3 + ["0"] * 3, res
    assert snap(p) == before, f"{p} changed"
    blocks = site.attr_blocks()
    assert {e["access"][0] for e in blocks} == {"attr.mode", "attr.owner", "attr.times"}
    for e in blocks:
        assert e["rule_id"] == f"filesystem.self-protection:{p}", e
        assert e["verdict"] == "deny" and e["escalation_id"] is None


# ---- other names for outside files ------------------------------------------------------------
def test_a_symlink_in_the_cwd_to_an_outside_file(site: Site) -> None:
    outside = site.out / "f.txt"
    before = snap(outside)
    (site.work / "link").symlink_to(outside)
    res = site.ops(["chmod", "link", 0o777], ["chown", "link", 1, 1], ["utime", "link", 5],
                   ["lchown", "link", 1, 1], ["lutime", "link", 5], ["lchmod", "link", 0o700])
    # chmod, chown, utime follow the link: refused; the link itself is the run's
    assert list(res.values()) == ["EPERM", "EPERM", "EPERM", "0", "0", "ENOTSUP"], res
    assert snap(outside) == before
    st = os.lstat(site.work / "link")
    assert (st.st_uid, st.st_mtime) == (1, 5)
    assert {e["path"] for e in site.attr_blocks()} == {str(outside)}


def test_hard_links(site: Site) -> None:
    """Landlock refuses to link an outside file into a writable tree (REFER: the link would
    gain the write rights its old place lacks), so a run can never make such a link. One made
    by someone else is the file itself: a trust anchor stays refused by identity; any other
    file is writable through it by Landlock's rules already, and its mode follows."""
    outside = site.out / "f.txt"
    config = site.etc / "config.yaml"
    os.link(config, site.work / "cfg-link")
    other = site.out / "other.txt"
    other.write_text("other\n")
    os.link(other, site.work / "other-link")
    before, cfg_before = snap(outside), snap(config)
    res = site.ops(["link", str(outside), "hard"], ["chmod", "cfg-link", 0o666],
                   ["chown", "cfg-link", 1, 1], ["append", "other-link"],
                   ["chmod", "other-link", 0o600])
    assert list(res.values()) == ["EXDEV", "EPERM", "EPERM", "0", "0"], res
    assert not (site.work / "hard").exists()
    assert snap(outside) == before and snap(config) == cfg_before
    assert stat.S_IMODE(other.stat().st_mode) == 0o600 and other.read_text() == "other\nx"
    blocks = site.attr_blocks()
    assert {e["rule_id"] for e in blocks} == {
        f"filesystem.self-protection:{site.work / 'cfg-link'}"}, blocks
    assert str(config) in blocks[0]["reason"]


def test_proc_magic_links(site: Site) -> None:
    outside = site.out / "f.txt"
    before = snap(outside)
    (site.work / "mine").write_text("mine\n")
    o = str(outside)
    res = site.ops(["fdop", o, "proc-self-fd"], ["fdop", o, "proc-thread-self-fd"],
                   ["fdop", o, "fchmod"], ["fdop", o, "fchown"], ["fdop", o, "futimens"],
                   ["chmod", "/proc/self/root" + o, 0o777], ["chmod", "/proc/self/cwd/mine", 0o600],
                   ["fdop", "mine", "proc-self-fd"], ["fdop", "mine", "fchmod"],
                   ["fdop", "mine", "fchown"], ["fdop", "mine", "futimens"],
                   ["libc-lchmod", "mine", 0o640], ["opath-fchmod", "mine"])
    assert list(res.values()) == ["EPERM"] * 7 + ["0"] * 5 + ["EBADF"], res
    assert snap(outside) == before
    st = (site.work / "mine").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_mtime) == (0o640, 1, 5)
    rules = {e["rule_id"] for e in site.attr_blocks()}
    assert f"filesystem.write:{outside}" in rules
    # /proc/self/root and /proc/self/cwd would be the supervisor's own in its view: never walked
    assert {r for r in rules if r.startswith("filesystem.attr-unresolvable:")}, rules


def test_a_path_component_swapped_between_check_and_act(site: Site) -> None:
    """A thread of the run swaps a symlinked directory and a symlinked last component between
    the run's writable tree and an outside directory while another chmods, chowns and utimes
    through them: 2 x 300 tries, zero escapes (the outside file's mode, owner, times and ctime
    never change), and both sides of the race were hit."""
    outside = site.out / "f.txt"
    before = snap(outside)
    script = site.root / "race.py"
    script.write_text(textwrap.dedent(f"""\
        import json, os, threading
        OUT = {str(site.out)!r}
        os.mkdir("inside"); open("inside/f.txt", "w").close()
        os.symlink("inside", "d"); os.symlink("inside/f.txt", "lf")
        stop = []
        def racer():
            i = 0
            while not stop:
                a = ("inside", OUT)[i % 2]
                os.symlink(a, "tmpd"); os.replace("tmpd", "d")
                os.symlink(a + "/f.txt", "tmpf"); os.replace("tmpf", "lf")
                i += 1
        t = threading.Thread(target=racer); t.start()
        res = {{"d/f.txt": {{}}, "lf": {{}}}}
        try:
            for k in range(300):
                for p in res:
                    try:
                        if k % 3 == 0:
                            os.chmod(p, 0o777)
                        elif k % 3 == 1:
                            os.chown(p, 1, 1)
                        else:
                            os.utime(p, (5, 5))
                        r = "ok"
                    except OSError as e:
                        r = str(e.errno)
                    res[p][r] = res[p].get(r, 0) + 1
        finally:
            stop.append(1); t.join()
        print(json.dumps(res))
        """))
    r = site.run("python3", str(script), timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.splitlines()[-1])
    print(res)
    assert snap(outside) == before, "an escape: the outside file changed"
    for p, counts in res.items():
        assert sum(counts.values()) == 300 and counts.get("ok") and counts.get("1"), (p, res)
        assert set(counts) <= {"ok", "1", "2"}, res  # ENOENT: between symlink and replace
    assert {e["path"] for e in site.attr_blocks()} == {str(outside)}


# ---- bits, attributes and kinds that stay refused ---------------------------------------------
def test_setuid_and_setgid_bits_are_never_added(site: Site) -> None:
    (site.work / "f").write_text("x")
    (site.work / "d").mkdir()
    keep = site.work / "was-setuid"
    keep.write_text("#!/bin/sh\n")
    keep.chmod(0o4755)
    written = site.work / "written"
    written.write_text("x")
    written.chmod(0o6755)
    res = site.ops(["chmod", "f", 0o4755], ["chmod", "f", 0o2755], ["chmod", "d", 0o2755],
                   ["chmod", "f", 0o1755], ["chmod", "was-setuid", 0o4700],
                   ["chmod", "was-setuid", 0o755], ["create", "new-suid", 0o4755],
                   ["create", "new-sgid", 0o2755], ["mknod", "nod-suid", 0o4755],
                   ["openat2", "via-openat2"], ["create", "plain", 0o755],
                   ["append", "written"])
    assert list(res.values()) == ["EPERM", "EPERM", "EPERM", "0", "0", "0", "EPERM", "EPERM",
                                  "EPERM", "ENOSYS", "0", "0"], res
    assert stat.S_IMODE((site.work / "f").stat().st_mode) == 0o1755
    assert stat.S_IMODE(keep.stat().st_mode) == 0o755
    for n in ("new-suid", "new-sgid", "nod-suid", "via-openat2"):
        assert not (site.work / n).exists()
    # CAP_FSETID is dropped: a write clears the bits (the kernel keeps them for FSETID holders)
    assert stat.S_IMODE(written.stat().st_mode) == 0o755
    blocks = site.attr_blocks()
    assert {(e["rule_id"], e["verdict"]) for e in blocks} == {
        (f"filesystem.setid:{site.work / 'f'}", "deny"),
        (f"filesystem.setid:{site.work / 'd'}", "deny")}
    assert "setuid" in blocks[0]["reason"]


def test_extended_attributes_and_file_capabilities_stay_refused(site: Site) -> None:
    (site.work / "f").write_text("x")
    res = site.ops(["setxattr", "f", "user.x"], ["setxattr", "f", "security.capability"],
                   ["removexattr", "f", "user.x"], ["chmod", "f", 0o600])
    assert list(res.values()) == ["EPERM", "EPERM", "EPERM", "0"], res
    assert not os.listxattr(site.work / "f")


def test_special_files_are_refused(site: Site) -> None:
    os.mkfifo(site.work / "fifo", 0o600)
    res = site.ops(["chmod", "fifo", 0o666], ["chown", "fifo", 1, 1], ["chmod", "/dev/null", 0o666],
                   ["chmod", "/proc/self/status", 0o666])
    assert list(res.values()) == ["EPERM"] * 4, res
    assert stat.S_IMODE(os.stat(site.work / "fifo").st_mode) == 0o600
    rules = {e["rule_id"] for e in site.attr_blocks()}
    assert f"filesystem.attr-type:{site.work / 'fifo'}" in rules, rules


# ---- modes of the run -------------------------------------------------------------------------
def test_monitor_mode_mediates_like_its_write_rules(site: Site) -> None:
    """Monitor mode does not enforce the profile's write rules: chmod outside them works like
    a write does; glassbreak's own files stay refused."""
    outside = site.out / "f.txt"
    res = site.ops(["chmod", str(outside), 0o640],
                   ["chmod", str(site.etc / "config.yaml"), 0o644], flags=("--mode", "monitor"))
    assert list(res.values()) == ["0", "EPERM"], res
    assert stat.S_IMODE(outside.stat().st_mode) == 0o640
    [e] = site.attr_blocks()
    assert e["rule_id"] == f"filesystem.self-protection:{site.etc / 'config.yaml'}"


def test_without_the_filesystem_layer_the_root_guard_refuses(site: Site) -> None:
    """--degraded landlock: no per-run layer says what the run may write: EPERM, as before."""
    (site.work / "mine").write_text("mine\n")
    res = site.ops(["chmod", "mine", 0o600], ["utime", "mine", 5],
                   flags=("--degraded", "landlock"))
    assert list(res.values()) == ["EPERM", "EPERM"], res
    assert not site.attr_blocks()
