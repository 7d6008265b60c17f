"""The filesystem layer's pure parts: the Landlock plan (a fake filesystem, no syscalls), the
profile section (validation with file:line, `extends` merging), which rule refused a path, and
what goes into each of the two layers."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.errors import ProfileError
from sandbox.kernel import landlock as L
from sandbox.policy.filesystem import FsRules, covers, expand, spelled
from sandbox.policy.loader import resolve
from sandbox.policy.profile import FilesystemPolicy


class FakeView:
    """A tree from a dict: {"/a/b": "dir", "/a/f": "file", "/l": "link:/a"}."""

    def __init__(self, spec: dict[str, str]) -> None:
        self.kinds: dict[str, str] = {"/": "dir"}
        self.links: dict[str, str] = {}
        for path, kind in spec.items():
            parts = path.strip("/").split("/")
            for i in range(1, len(parts)):
                self.kinds.setdefault("/" + "/".join(parts[:i]), "dir")
            if kind.startswith("link:"):
                self.kinds[path], self.links[path] = "link", kind[5:]
            else:
                self.kinds[path] = kind

    def realpath(self, path: str) -> str | None:
        out = "/"
        for part in path.strip("/").split("/"):
            if not part:
                continue
            cur = out.rstrip("/") + "/" + part
            for _ in range(40):
                if self.kinds.get(cur) != "link":
                    break
                cur = self.links[cur]
            out = cur
        return out if out in self.kinds else None

    def kind(self, path: str) -> str | None:
        return self.kinds.get(path)

    def entries(self, path: str) -> list[tuple[str, str]]:
        pre = path.rstrip("/") + "/"
        return sorted((p[len(pre):], k) for p, k in self.kinds.items()
                      if p.startswith(pre) and "/" not in p[len(pre):] and p != path)


FS = FakeView({
    "/etc/passwd": "file", "/etc/ssl/certs/ca.pem": "file", "/etc/glassbreak/token": "file",
    "/usr/bin/true": "file", "/usr/bin/python3": "link:/usr/bin/python3.11",
    "/usr/bin/python3.11": "file", "/bin": "link:/usr/bin",
    "/root/.ssh/id_rsa": "file", "/root/.bashrc": "file",
    "/home/u/proj/src/x.c": "file", "/home/u/proj/README": "file",
    "/home/u/proj/.venv/lib/site.py": "file", "/home/u/proj/.gb/state.db": "file",
    "/dev/null": "file", "/dev/sda": "file",
})


def rules(p: L.Plan) -> dict[str, tuple[int, bool]]:
    return {r.path: (r.access, r.is_dir) for r in p.rules}


# ---- the plan -----------------------------------------------------------------------------------
def test_read_all_but_hidden_keeps_ancestors_listable() -> None:
    p = L.plan([L.Grant("/", L.FS_READ | L.FS_REFER)], hidden=["/root/.ssh", "/etc/glassbreak"],
               view=FS)
    r = rules(p)
    # "/" keeps READ_DIR (and REFER) for everything beneath it: `ls /`, `ls /etc` work; the
    # file contents come from the siblings' rules on the way down to the hidden paths
    assert r["/"] == (L.FS_READ_DIR | L.FS_REFER, True)
    assert "/etc" not in r and "/root" not in r
    assert r["/usr"] == (L.FS_READ_FILE, True)
    assert r["/etc/passwd"] == (L.FS_READ_FILE, False)
    assert r["/root/.bashrc"] == (L.FS_READ_FILE, False)
    assert r["/etc/ssl"] == (L.FS_READ_FILE, True)
    assert "/root/.ssh" not in r and "/etc/glassbreak" not in r  # names listable, no contents
    assert "/bin" not in r  # a symlink among the siblings: skipped, /usr covers its target
    assert p.expanded == ["/", "/etc", "/root"]
    assert {"/", "/etc", "/root"} <= set(p.watch)


def test_devices_excluded_and_some_re_allowed() -> None:
    p = L.plan([L.Grant("/", L.FS_READ, except_=("/dev",)), L.Grant("/dev/null", L.FS_DEVICE)],
               view=FS)
    r = rules(p)
    assert r["/"] == (L.FS_READ_DIR, True) and "/dev" not in r and "/dev/sda" not in r
    assert r["/dev/null"] == (L.FS_DEVICE, False)


def test_protected_beneath_a_writable_cwd() -> None:
    cwd = "/home/u/proj"
    p = L.plan([L.Grant(cwd, L.FS_READ | L.FS_WRITE)], hidden=[cwd + "/.gb"],
               read_only=[cwd + "/.venv"], view=FS)
    r = rules(p)
    # the price: the cwd itself may not create or delete entries (the protected subtrees
    # would inherit it); its files and its other subtrees are writable
    assert not r[cwd][0] & (L.FS_MAKE_REG | L.FS_REMOVE_FILE | L.FS_WRITE_FILE)
    assert r[cwd][0] | r[cwd + "/src"][0] == L.FS_READ | L.FS_WRITE
    assert r[cwd + "/README"][0] & L.FS_WRITE_FILE
    assert not r[cwd + "/.venv"][0] & L.FS_MODIFY
    assert cwd + "/.gb" not in r


def test_symlinks_resolved_and_missing_skipped() -> None:
    p = L.plan([L.Grant("/bin/python3", L.FS_EXEC), L.Grant("/nope", L.FS_READ)], view=FS)
    assert rules(p) == {"/usr/bin/python3.11": (L.FS_EXEC, False)}
    assert p.skipped == [("/nope", "does not exist")]
    assert "/" in p.watch  # /nope's parent: when it appears, a cached layer is re-planned


def test_support_per_abi() -> None:
    assert L.Support.of(2).fs & L.FS_REFER and not L.Support.of(2).fs & L.FS_TRUNCATE
    assert L.Support.of(5).fs == L.FS_ALL and L.Support.of(5).scoped == 0
    assert L.Support.of(6).scoped == 3 and L.Support.of(7).restrict_flags == 7


# ---- the profile section ---------------------------------------------------------------------
def test_paths_and_variables() -> None:
    assert spelled("~/.ssh/") == "$HOME/.ssh" and spelled("${CWD}/x") == "$CWD/x"
    assert covers("/", "$HOME/.kube/config") and covers("$CWD", "${CWD}/build")
    assert not covers("$HOME", "/root/x") and not covers("/usr/lib", "/usr/lib64")
    v = {"CWD": "/w", "HOME": "/root", "TMPDIR": "/t/run_1"}
    assert expand("~/.kube/../.kube/config", v) == "/root/.kube/config"
    assert expand("$TMPDIR", v) == "/t/run_1"


@pytest.mark.parametrize("bad,why", [
    ("relative/path", "not an absolute path"), ("$NOPE/x", "unknown variable $NOPE"),
    ("/a/../etc", "'..' is not allowed"), ("/a/$CWD", "a variable may only start a path"),
])
def test_bad_paths_are_load_errors_with_file_and_line(tmp_path: Path, bad: str, why: str
                                                      ) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(f"name: p\nextends: base\nfilesystem:\n  write:\n    - $CWD\n    - {bad}\n")
    with pytest.raises(ProfileError) as e:
        resolve(str(f))
    assert f"{f}:6" in e.value.message and why in e.value.message


def test_unknown_key_says_did_you_mean(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("name: p\nfilesystem:\n  hiden: [~/.ssh]\n")
    with pytest.raises(ProfileError) as e:
        resolve(str(f))
    assert f"{f}:3" in e.value.message and "hidden" in (e.value.hint or "")


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(text)
    return p


def test_merge_first_definer_then_only_narrower(tmp_path: Path) -> None:
    _write(tmp_path, "data", "name: data\nextends: base\nfilesystem:\n"
           "  write: [$CWD, $TMPDIR, /srv/data]\n")  # base lists no write: data defines it
    narrow = _write(tmp_path, "narrow", "name: narrow\nextends: ./data.yaml\nfilesystem:\n"
                    "  write: [/srv/data/in]\n  hidden: [/srv/data/in/keys]\n  default: deny\n")
    p = resolve(str(narrow))
    assert p.filesystem.write == ["/srv/data/in"]
    assert p.filesystem.hidden == ["~/.ssh", "~/.aws", "~/.config/gcloud", "~/.kube",
                                   "/srv/data/in/keys"]  # base's stay
    assert p.filesystem.default == "deny"
    wide = _write(tmp_path, "wide", "name: wide\nextends: ./data.yaml\nfilesystem:\n"
                  "  write:\n    - $CWD\n    - /etc\n")
    with pytest.raises(ProfileError) as e:
        resolve(str(wide))
    assert f"{wide}:6" in e.value.message and "not covered" in e.value.message
    loose = _write(tmp_path, "loose", "name: loose\nextends: ./data.yaml\nrelax: true\n"
                   "filesystem:\n  write: [$CWD, /etc]\n  default: block\n")
    assert resolve(str(loose)).filesystem.write == ["$CWD", "/etc"]


def test_a_child_cannot_relax_default_but_re_opens_a_file_beneath_hidden(tmp_path: Path) -> None:
    parent = _write(tmp_path, "strict", "name: strict\nextends: base\nfilesystem:\n"
                    "  default: deny\n")
    child = _write(tmp_path, "kid", f"name: kid\nextends: {parent}\nfilesystem:\n"
                   "  default: block\n  read: [/, ~/.kube/config]\n")
    p = resolve(str(child))
    assert p.filesystem.default == "deny"
    r = FsRules.of(p.filesystem, {"CWD": "/w", "HOME": "/root", "TMPDIR": "/t/r"})
    assert r.governing("/root/.kube/config") == ("read", "$HOME/.kube/config",
                                                 "/root/.kube/config")
    assert r.governing("/root/.kube/cache/x")[0] == "hidden"  # type: ignore[index]


def test_shipped_k8s_profiles_read_the_kubeconfig_only() -> None:
    for name in ("k8s-readonly", "k8s-ops-escalated"):
        p = resolve(name)
        r = FsRules.of(p.filesystem, {"CWD": "/w", "HOME": "/root", "TMPDIR": "/t/r"})
        assert r.governing("/root/.kube/config")[0] == "read"  # type: ignore[index]
        assert r.governing("/root/.ssh/id_ed25519")[0] == "hidden"  # type: ignore[index]
        assert r.governing("/root/.kube/token")[0] == "hidden"  # type: ignore[index]


# ---- which rule refused a path ----------------------------------------------------------------
RULES = FsRules.of(FilesystemPolicy(hidden=["~/.ssh"]),
                   {"CWD": "/w", "HOME": "/root", "TMPDIR": "/t/r"})
ANCHORS = [("/var/lib/glassbreak", "glassbreak's state", True),
           ("/etc/glassbreak", "glassbreak's config", False)]


def _judge(path: str, rights: list[str]) -> tuple[str, str, str]:
    prot = [(p, why) for p, why, hidden in ANCHORS
            if hidden or not set(rights) <= {"fs.read_file", "fs.read_dir", "fs.execute"}]
    j = RULES.judge(path, rights, protected=prot)
    return j.rule_id, j.verdict, j.access


def test_judgements() -> None:
    assert _judge("/etc/hosts", ["fs.write_file"]) == \
        ("filesystem.write:/etc/hosts", "block", "write")
    assert _judge("/root/.ssh/id_rsa", ["fs.read_file"]) == \
        ("filesystem.hidden:/root/.ssh/id_rsa", "block", "read")
    assert _judge("/var/lib/glassbreak/audit.jsonl", ["fs.write_file", "fs.truncate"]) == \
        ("filesystem.self-protection:/var/lib/glassbreak/audit.jsonl", "deny", "write")
    assert _judge("/var/lib/glassbreak/state.db", ["fs.read_file"])[1] == "deny"
    assert _judge("/etc/glassbreak/profiles", ["fs.make_reg"])[1] == "deny"
    assert _judge("/tmp/copy-of-true", ["fs.execute"]) == \
        ("filesystem.execute:/tmp/copy-of-true", "deny", "execute")
    j = RULES.judge("/etc", ["fs.make_reg"])
    assert "outside the profile's filesystem.write ($CWD, $TMPDIR)" in j.reason


def test_default_deny_makes_denials_unescalatable() -> None:
    r = FsRules.of(FilesystemPolicy(default="deny"), {"CWD": "/w", "HOME": "/h", "TMPDIR": "/t"})
    assert r.judge("/etc/hosts", ["fs.write_file"]).verdict == "deny"


# ---- what the two layers are made of ----------------------------------------------------------
def test_layer_inputs() -> None:
    from sandbox.run.filesystem import Anchors, run_inputs, static_inputs

    anchors = Anchors(read_only=("/etc/glassbreak", "/var/lib/glassbreak"),
                      hidden=("/var/lib/glassbreak",), why=())
    v = {"CWD": "/w", "HOME": "/root", "TMPDIR": "/t"}
    rules = FsRules.of(FilesystemPolicy(hidden=["~/.ssh"]), v)
    st = static_inputs(rules, anchors, exec_all=False, tmp_parent="/t", monitor=False)
    read = [g for g in st.grants if g.path == "/"]
    assert read and read[0].access == L.FS_READ | L.FS_REFER
    assert set(read[0].except_) == {"/root/.ssh", "/dev"}
    assert st.hidden == ("/var/lib/glassbreak",) and st.handled == L.STATIC_FS
    assert st.scoped == L.SCOPE_SIGNAL | L.SCOPE_ABSTRACT_UNIX_SOCKET
    assert not any(g.access & L.FS_EXECUTE and g.path == "/" for g in st.grants)  # envelope
    mon = static_inputs(rules, anchors, exec_all=False, tmp_parent="/t", monitor=True)
    assert [g.except_ for g in mon.grants if g.path == "/"] == [("/dev",)]  # profile off
    assert mon.hidden == st.hidden  # glassbreak's own protections stay
    run = run_inputs(FsRules.of(FilesystemPolicy(), {**v, "TMPDIR": "/t/run_1"}), anchors,
                     tmp="/t/run_1", monitor=False)
    assert {g.path for g in run.grants if g.access & L.FS_MAKE_REG} == {"/w", "/t/run_1"}
    assert run.read_only == anchors.read_only and run.handled == L.RUN_FS


def test_secret_files_are_found_by_key_name() -> None:
    from sandbox.run.anchors import secret_files

    cfg = {"decisionSecretFile": "/etc/glassbreak/decision", "approverTokens": {
        "alice": {"tokenFile": "tokens/alice"}}, "webhooks": [{"url": "https://x",
                                                              "secretFile": "/s/hook"}],
        "grantSigning": {"privateKeyFile": "/etc/glassbreak/grant.key", "publicKey": "AAAA"}}
    assert sorted(secret_files(cfg, Path("/etc/glassbreak"))) == [
        "/etc/glassbreak/decision", "/etc/glassbreak/grant.key", "/etc/glassbreak/tokens/alice",
        "/s/hook"]


def test_a_run_started_in_root_does_not_get_the_system_writable() -> None:
    from sandbox.run.filesystem import Anchors, run_inputs

    anchors = Anchors(read_only=(), hidden=(), why=())
    v = {"CWD": "/", "HOME": "/", "TMPDIR": "/t/run_1"}
    run = run_inputs(FsRules.of(FilesystemPolicy(write=["$CWD", "$HOME", "$TMPDIR"]), v),
                     anchors, tmp="/t/run_1", monitor=False)
    assert [g.path for g in run.grants] == ["/t/run_1"]
    run = run_inputs(FsRules.of(FilesystemPolicy(write=["/"]), v), anchors, tmp="/t/run_1",
                     monitor=False)
    assert [g.path for g in run.grants] == ["/"]  # a profile that says so, gets it
