"""Program resolution (execvp rules) and binary identity (sandbox.policy.resolve), on real files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from sandbox.errors import EXIT_NOT_FOUND, CommandNotFound
from sandbox.policy import resolve
from sandbox.policy.resolve import (
    ResolvedProgram,
    applet_argv,
    identify,
    is_loader,
    multicall_name,
    program_at,
    resolve_program,
    sha256_file,
)
from tests.conftest import require

LOADERS = ["/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"]


def script(path: Path, body: str, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n# {path}\n{body}\n")
    path.chmod(mode)
    return path


@pytest.fixture(autouse=True)
def fresh_caches() -> None:
    resolve.clear_caches()


# -- execvp resolution -----------------------------------------------------------------------
def test_path_search_order_and_skips(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    script(a / "tool", "echo a", mode=0o644)  # no x bit: skipped, like execvp
    (b / "tool").mkdir(parents=True)  # a directory: skipped
    c = script(tmp_path / "c" / "tool", "echo c")
    r = resolve_program("tool", f"{a}:{b}:{tmp_path / 'c'}", "/")
    assert r == ResolvedProgram(str(c), str(c))


def test_empty_path_entry_is_cwd_and_relative_entries(tmp_path: Path) -> None:
    t = script(tmp_path / "tool", "true")
    assert resolve_program("tool", "/nonexistent::/usr/bin", str(tmp_path)).realpath == str(t)
    assert resolve_program("tool", "/nonexistent:.", str(tmp_path)).realpath == str(t)
    sub = script(tmp_path / "rel" / "tool2", "true")
    assert resolve_program("tool2", "rel", str(tmp_path)).realpath == str(sub)


def test_names_with_slash_are_relative_to_cwd_and_skip_path(tmp_path: Path) -> None:
    t = script(tmp_path / "bin" / "ls", "true")
    r = resolve_program("bin/ls", "/usr/bin", str(tmp_path))
    assert r.path_as_found == str(t)
    r = resolve_program("./bin/../bin/ls", "/usr/bin", str(tmp_path))
    assert r.path_as_found == str(t) and r.realpath == str(t)


def test_symlink_keeps_path_as_found_and_realpath(tmp_path: Path) -> None:
    target = script(tmp_path / "real" / "kubectl", "true")
    link = tmp_path / "bin" / "k"
    link.parent.mkdir()
    link.symlink_to(target)
    r = resolve_program("k", str(link.parent), "/")
    assert r.path_as_found == str(link) and r.realpath == str(target)
    assert program_at(str(link)).realpath == str(target)


def test_not_found_says_what_and_what_next(tmp_path: Path) -> None:
    with pytest.raises(CommandNotFound) as e:
        resolve_program("no-such-tool-xyz", str(tmp_path), "/")
    assert "no-such-tool-xyz" in e.value.message and str(tmp_path) in e.value.message
    assert e.value.hint and e.value.exit_code == EXIT_NOT_FOUND
    with pytest.raises(CommandNotFound) as e:
        resolve_program("./missing", "/usr/bin", str(tmp_path))
    assert "does not exist" in e.value.message
    script(tmp_path / "noexec", "true", mode=0o644)
    with pytest.raises(CommandNotFound) as e:
        resolve_program("./noexec", "/usr/bin", str(tmp_path))
    assert "execute bit" in e.value.message
    with pytest.raises(CommandNotFound):
        resolve_program("", "/usr/bin", "/")


def test_unset_path_uses_execvp_default() -> None:
    assert resolve_program("sh", None, "/").realpath == os.path.realpath("/bin/sh")


# -- sha256 cache ------------------------------------------------------------------------------
def test_sha256_cached_by_stat_and_recomputed_on_change(tmp_path: Path) -> None:
    import hashlib

    f = tmp_path / "f"
    f.write_bytes(b"one")
    assert sha256_file(str(f)) == hashlib.sha256(b"one").hexdigest()
    st = f.stat()
    key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
    assert resolve._HASHES[key] == hashlib.sha256(b"one").hexdigest()
    resolve._HASHES[key] = "cached"  # proves the cache is used while the stat is unchanged
    assert sha256_file(str(f)) == "cached"
    f.write_bytes(b"two!")
    assert sha256_file(str(f)) == hashlib.sha256(b"two!").hexdigest()
    with pytest.raises(OSError):
        sha256_file(str(tmp_path / "missing"))


# -- identity of ruled binaries ----------------------------------------------------------------
@pytest.fixture
def ruled(tmp_path: Path) -> tuple[Path, Path]:
    """A trusted dir holding a ruled `kubectl` (unique content), and an untrusted dir."""
    trusted = tmp_path / "trusted"
    k = script(trusted / "kubectl", f"echo stub-kubectl {tmp_path}")
    untrusted = tmp_path / "untrusted"
    untrusted.mkdir()
    return k, untrusted


def ident(prog: ResolvedProgram, trusted: Path) -> list[tuple[str, str, bool]]:
    return [(i.key, i.how, i.grants_allow) for i in identify(("kubectl", "rm"), [str(trusted)],
                                                             prog)]


def test_name_in_trusted_dir(ruled: tuple[Path, Path]) -> None:
    k, _ = ruled
    assert ident(program_at(str(k)), k.parent) == [("kubectl", "name", True)]


@pytest.mark.parametrize("how", ["copy", "hardlink", "rename", "symlink"])
def test_copies_links_renames_keep_the_rule(ruled: tuple[Path, Path], how: str) -> None:
    k, untrusted = ruled
    other = untrusted / "innocent-name"
    if how == "copy":
        shutil.copy2(k, other)
    elif how == "hardlink":
        os.link(k, other)
    elif how == "rename":
        other = k.parent / "kc"  # renamed inside the trusted dir
        shutil.copy2(k, other)
    else:
        other.symlink_to(k)
    found = ident(program_at(str(other)), k.parent)
    assert found and found[0][0] == "kubectl" and found[0][2] is True, found
    assert found[0][1] == ("name" if how == "symlink" else "hash")


def test_same_name_outside_trusted_dirs_restricts_but_does_not_allow(
        ruled: tuple[Path, Path]) -> None:
    k, untrusted = ruled
    fake = script(untrusted / "kubectl", "echo something else")
    assert ident(program_at(str(fake)), k.parent) == [("kubectl", "untrusted-name", False)]


def test_symlink_in_trusted_dir_is_judged_by_its_target(ruled: tuple[Path, Path]) -> None:
    """Issue 10 (OpenClaw's vector): a symlink in a trusted dir whose target lies outside is
    not trusted by its name, and the target's content is not ruled content: whoever can write
    the target's tree could swap the binary and keep the rule. The rule still restricts it."""
    k, untrusted = ruled
    sdk = script(untrusted / "sdk-rm", "echo the real rm")
    (k.parent / "rm").symlink_to(sdk)
    assert ident(program_at(str(k.parent / "rm")), k.parent) == [("rm", "untrusted-name", False)]
    assert ident(program_at(str(sdk)), k.parent) == []
    # trusting the target's directory (the operator's call) makes it rm again
    got = [(i.key, i.how, i.grants_allow)
           for i in identify(("rm",), [str(k.parent), str(untrusted)],
                             program_at(str(k.parent / "rm")))]
    assert got == [("rm", "name", True)]


def test_symlink_name_counts_when_link_and_target_are_trusted(
        ruled: tuple[Path, Path]) -> None:
    """/usr/bin/awk -> /etc/alternatives/awk -> /usr/bin/mawk: both ends trusted, so `awk` is
    a name it goes by; the same link in an untrusted dir gives it no name but its target's."""
    k, untrusted = ruled
    (k.parent / "k").symlink_to(k)
    assert ident(program_at(str(k.parent / "k")), k.parent) == [("kubectl", "name", True)]
    rm_link = k.parent / "rm"
    rm_link.symlink_to(k)  # a trusted link named rm, to the trusted kubectl
    got = ident(program_at(str(rm_link)), k.parent)
    assert ("rm", "name", True) in got and ("kubectl", "name", True) in got
    elsewhere = untrusted / "rm"
    elsewhere.symlink_to(k)  # an untrusted link named rm: it is kubectl, and only named rm
    got = ident(program_at(str(elsewhere)), k.parent)
    assert ("kubectl", "name", True) in got and ("rm", "untrusted-name", False) in got


def test_changed_copy_is_not_the_ruled_binary(ruled: tuple[Path, Path]) -> None:
    k, untrusted = ruled
    other = untrusted / "kc"
    other.write_bytes(k.read_bytes() + b"# changed\n")
    assert ident(program_at(str(other)), k.parent) == []


def test_absolute_path_keys(ruled: tuple[Path, Path]) -> None:
    k, untrusted = ruled
    link = untrusted / "via-link"
    link.symlink_to(k)
    got = identify((str(k),), [], program_at(str(link)))
    assert [(i.key, i.how) for i in got] == [(str(k), "path")]
    copy = untrusted / "copy"
    shutil.copy2(k, copy)
    got = identify((str(k),), [], program_at(str(copy)))
    assert [(i.key, i.how) for i in got] == [(str(k), "hash")]


def test_ruled_hashes_follow_changes_after_ttl(ruled: tuple[Path, Path],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    k, untrusted = ruled
    new = b"#!/bin/sh\necho upgraded kubectl\n"
    copy = untrusted / "copy"
    copy.write_bytes(new)
    assert ident(program_at(str(copy)), k.parent) == []
    k.write_bytes(new)  # the trusted binary is upgraded
    monkeypatch.setattr(resolve, "CACHE_TTL", 0.0)
    resolve._TTL.clear()
    assert ident(program_at(str(copy)), k.parent) == [("kubectl", "hash", True)]


# -- multi-call binaries and the loader --------------------------------------------------------
def test_busybox_is_multicall_by_name_and_by_content(tmp_path: Path) -> None:
    require(os.path.exists("/bin/busybox"), "busybox-static is installed by scripts/setup.sh")
    bb = program_at("/bin/busybox")
    assert multicall_name(bb, ["/bin"]) == "busybox"
    copy = tmp_path / "innocent"
    shutil.copy2("/bin/busybox", copy)
    assert multicall_name(program_at(str(copy)), ["/usr/bin", "/bin"]) == "busybox"
    assert multicall_name(program_at("/usr/bin/true"), ["/usr/bin"]) is None


@pytest.mark.parametrize("argv,applet", [
    (["busybox", "rm", "-rf", "x"], ["rm", "-rf", "x"]),
    (["/bin/busybox", "rm", "x"], ["rm", "x"]),
    (["rm", "-rf", "x"], ["rm", "-rf", "x"]),  # symlink farm / exec -a rm
    (["/tmp/x/rm", "-r"], ["rm", "-r"]),
    (["busybox", "busybox", "sh", "-c", "id"], ["sh", "-c", "id"]),
    (["busybox.static", "ls"], ["ls"]),
    (["busybox"], None), (["busybox", "--list"], None), (["busybox", "--install", "-s"], None),
])
def test_applet_argv(argv: list[str], applet: list[str] | None) -> None:
    assert applet_argv(argv, "busybox") == applet


@pytest.mark.parametrize("path", LOADERS)
def test_loader_recognised_by_path(path: str) -> None:
    require(os.path.exists(path), f"{path} exists on x86_64 Debian")
    assert is_loader(program_at(path))


def test_loader_recognised_by_content(tmp_path: Path) -> None:
    require(os.path.exists(LOADERS[1]), "the x86_64 loader exists")
    copy = tmp_path / "not-a-loader-name"
    shutil.copy2(LOADERS[1], copy)
    assert is_loader(program_at(str(copy)))
    assert not is_loader(program_at("/usr/bin/true"))
