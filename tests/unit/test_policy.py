"""check_argv / explain (sandbox.policy.check): the decision both layers use, on real files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from sandbox.errors import CommandNotFound
from sandbox.policy import resolve
from sandbox.policy.check import check_argv, explain
from sandbox.policy.decision import Verdict
from sandbox.policy.profile import ExecPolicy, ResolvedProfile, SafeBin
from tests.conftest import require

KUBECTL = SafeBin(
    allowedValueFlags=["-n", "--namespace", "-o", "--output", "--dry-run=client"],
    allowedFlags=["-A", "--all-namespaces", "-w", "--watch"],
    forbiddenFlags=["--force", "--grace-period"],
    restrictedCommands=["delete", "patch", "apply", "edit", "drain", "exec"],
)
RM = SafeBin(forbiddenFlags=["-r", "-R", "--recursive", "-f", "--force"])
LOADER = "/lib64/ld-linux-x86-64.so.2"
LOADER2 = "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"


@pytest.fixture(autouse=True)
def fresh_caches() -> None:
    resolve.clear_caches()


@pytest.fixture
def bindir(tmp_path: Path) -> Path:
    """A trusted dir with a stub kubectl whose content is unique to this test."""
    d = tmp_path / "bin"
    d.mkdir()
    k = d / "kubectl"
    k.write_text(f"#!/bin/sh\n# {tmp_path}\necho stub-kubectl \"$@\"\n")
    k.chmod(0o755)
    return d


def profile(bindir: Path, **exec_kw: object) -> ResolvedProfile:
    ex = {"allow": ["/bin/sh", "/usr/bin/cat", "/usr/bin/ls", "/usr/bin/*grep"],
          "trustedDirs": [str(bindir), "/usr/bin", "/bin"], **exec_kw}
    return ResolvedProfile(name="k8s-test", safeBins={"kubectl": KUBECTL, "rm": RM},
                           exec=ExecPolicy(**ex))  # type: ignore[arg-type]


def check(p: ResolvedProfile, bindir: Path, line: str | list[str], **kw: object):  # type: ignore[no-untyped-def]
    argv = line.split() if isinstance(line, str) else line
    return check_argv(p, argv, cwd=str(bindir.parent), env_path=f"{bindir}:/usr/bin:/bin",
                      **kw)  # type: ignore[arg-type]


# -- issue 2 "Done means" ---------------------------------------------------------------------
def test_done_means(bindir: Path) -> None:
    p = profile(bindir)
    ok = check(p, bindir, "kubectl get pods -n prod")
    assert ok.verdict is Verdict.ALLOW and ok.rule_id == "safeBins.kubectl"
    assert ok.binary == str(bindir / "kubectl") and ok.argv == ("kubectl", "get", "pods", "-n",
                                                                  "prod")
    cases = {
        "kubectl -n prod delete pod x": "safeBins.kubectl.restrictedCommands:delete",
        "kubectl delete --forc pod x": "safeBins.kubectl.forbiddenFlags:--force",
        "kubectl get pods --bogus": "safeBins.kubectl.allowlist:--bogus",
    }
    for line, rule in cases.items():
        d = check(p, bindir, line)
        assert d.verdict is Verdict.BLOCK and d.rule_id == rule, (line, d)
        assert d.binary == str(bindir / "kubectl") and d.argv == tuple(line.split())
    d = check(p, bindir, "kubectl delete --forc pod x")
    assert d.reason == "`--forc` is an abbreviation of the forbidden flag `--force`"


def test_ambiguous_rule_id(bindir: Path) -> None:
    p = ResolvedProfile(name="t", safeBins={"kubectl": SafeBin(
        allowedValueFlags=["--filename"], forbiddenFlags=["--force"])},
        exec=ExecPolicy(trustedDirs=[str(bindir)]))
    assert check(p, bindir, "kubectl apply --f x").rule_id == "safeBins.kubectl.ambiguous:--f"


# -- exec patterns and their order ------------------------------------------------------------
def test_exec_allow_and_default(bindir: Path) -> None:
    p = profile(bindir)
    d = check(p, bindir, "cat /etc/hostname")
    assert d.verdict is Verdict.ALLOW and d.rule_id == "exec.allow:/usr/bin/cat"
    assert check(p, bindir, "grep x").rule_id == "exec.allow:/usr/bin/*grep"
    d = check(p, bindir, "sh -c true")  # /bin/sh -> dash: exact entries compared after realpath
    assert d.verdict is Verdict.ALLOW and d.rule_id == "exec.allow:/bin/sh"
    d = check(p, bindir, "dd if=/dev/zero")
    assert d.verdict is Verdict.BLOCK and d.rule_id == "exec.default"
    assert "exec.default" in d.reason and d.binary == os.path.realpath("/usr/bin/dd")
    assert check(profile(bindir, default="deny"), bindir, "dd").verdict is Verdict.DENY
    assert check(profile(bindir, default="allow"), bindir, "dd").verdict is Verdict.ALLOW


def test_glob_directory_is_compared_after_realpath(bindir: Path) -> None:
    p = profile(bindir, allow=["/bin/*grep"])
    assert check(p, bindir, "/usr/bin/grep x").rule_id == "exec.allow:/bin/*grep"


def test_bare_name_patterns(bindir: Path, tmp_path: Path) -> None:
    p = profile(bindir, allow=["cat"], deny=["shred"])
    assert check(p, bindir, "cat x").rule_id == "exec.allow:cat"
    assert check(p, bindir, "shred x").rule_id == "exec.deny:shred"
    own = tmp_path / "elsewhere"
    own.mkdir()
    shutil.copy2("/usr/bin/cat", own / "cat")  # a bare allow name needs a trusted dir
    assert check(p, bindir, f"{own}/cat x").rule_id == "exec.default"


def test_deny_matches_path_as_found_and_realpath(bindir: Path, tmp_path: Path) -> None:
    p = profile(bindir, deny=["/usr/bin/shred", str(tmp_path / "links" / "*")])
    links = tmp_path / "links"
    links.mkdir()
    (links / "harmless").symlink_to("/usr/bin/cat")
    d = check(p, bindir, f"{links}/harmless x")  # realpath is allowed cat, but the path is denied
    assert d.verdict is Verdict.DENY and d.rule_id.startswith("exec.deny:")
    (links.parent / "s").mkdir()
    (links.parent / "s" / "wipe").symlink_to("/usr/bin/shred")
    d = check(p, bindir, f"{tmp_path}/s/wipe x")
    assert d.verdict is Verdict.DENY and d.rule_id == "exec.deny:/usr/bin/shred"


def test_order_deny_then_safebins_then_block_then_allow(bindir: Path) -> None:
    k = str(bindir / "kubectl")
    p = profile(bindir, deny=[k])
    assert check(p, bindir, "kubectl get pods").rule_id == f"exec.deny:{k}"
    # a ruled binary that passes its rule needs no exec.allow entry and beats exec.block
    p = profile(bindir, block=[k])
    assert check(p, bindir, "kubectl get pods").rule_id == "safeBins.kubectl"
    p = profile(bindir, block=["/usr/bin/cat"])
    assert check(p, bindir, "cat x").rule_id == "exec.block:/usr/bin/cat"


def test_rm_rule(bindir: Path) -> None:
    p = profile(bindir)
    assert check(p, bindir, "rm x").rule_id == "safeBins.rm"
    for line in ["rm -rf /", "rm -fr /", "rm x -r", "rm --rec x", "rm -vR x", "rm --forc x"]:
        d = check(p, bindir, line)
        assert d.verdict is Verdict.BLOCK and d.rule_id.startswith("safeBins.rm.forbiddenFlags")


# -- identity: copies, links, renames, exec -a ---------------------------------------------------
@pytest.mark.parametrize("how", ["copy", "hardlink", "symlink", "rename-in-trusted"])
def test_copies_do_not_escape_the_rule(bindir: Path, tmp_path: Path, how: str) -> None:
    p = profile(bindir)
    k = bindir / "kubectl"
    other = tmp_path / "hidden" / "get-pods"
    other.parent.mkdir()
    if how == "copy":
        shutil.copy2(k, other)
    elif how == "hardlink":
        os.link(k, other)
    elif how == "symlink":
        other.symlink_to(k)
    else:
        other = bindir / "kc"
        shutil.copy2(k, other)
    d = check(p, bindir, [str(other), "-n", "prod", "delete", "pod", "x"])
    assert d.verdict is Verdict.BLOCK and d.rule_id == "safeBins.kubectl.restrictedCommands:delete"
    assert "kubectl" in d.details["identity"]
    ok = check(p, bindir, [str(other), "get", "pods"])
    assert ok.verdict is Verdict.ALLOW and ok.rule_id == "safeBins.kubectl"


# -- trust by target (issue 10): a symlink is judged as the file it points to ------------------
def test_openclaw_head_through_a_trusted_symlink_to_outside_is_not_allowed(
        bindir: Path, tmp_path: Path) -> None:
    """OpenClaw's vector: `head -n 1` where the trusted dir's `head` is a symlink to a file
    outside every trusted dir. The `head` rule must not allow it (whoever can write the
    target's tree swaps the binary); it still restricts it, and the block says why."""
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "head"
    target.write_text(f"#!/bin/sh\n# {tmp_path}: not coreutils head\n")
    target.chmod(0o755)
    (bindir / "head").symlink_to(target)
    head = SafeBin(allowedValueFlags=["-n", "--lines"], maxPositional=0)
    p = ResolvedProfile(name="t", safeBins={"head": head},
                        exec=ExecPolicy(trustedDirs=[str(bindir)]))
    d = check(p, bindir, "head -n 1")
    assert d.verdict is Verdict.BLOCK and d.rule_id == "exec.default", d
    assert d.binary == str(target) and d.details["path"] == str(bindir / "head")
    assert "passes the safeBins rule `head`" in d.reason and "trusted directories" in d.reason
    assert "untrusted-name" in d.details["identity"]
    bad = check(p, bindir, "head -n 1 /etc/shadow")  # the rule still restricts it
    assert bad.rule_id == "safeBins.head.maxPositional"
    # positive controls: the same link to a target in a trusted dir, or a trusted target dir
    p2 = ResolvedProfile(name="t", safeBins={"head": head},
                         exec=ExecPolicy(trustedDirs=[str(bindir), str(outside)]))
    assert check(p2, bindir, "head -n 1").rule_id == "safeBins.head"
    (bindir / "head").unlink()
    (bindir / "head").symlink_to("/usr/bin/head")
    p3 = ResolvedProfile(name="t", safeBins={"head": head},
                         exec=ExecPolicy(trustedDirs=[str(bindir), "/usr/bin"]))
    assert check(p3, bindir, "head -n 1").rule_id == "safeBins.head"


def test_trusted_symlink_to_outside_lends_no_content(bindir: Path, tmp_path: Path) -> None:
    """The content of a symlink's outside target is not ruled content: a copy of it elsewhere
    is not kubectl (before, /usr/bin/kubectl -> outside made the outside file's hash trusted)."""
    outside = tmp_path / "sdk"
    outside.mkdir()
    real = outside / "tool"
    real.write_text(f"#!/bin/sh\n# {tmp_path}: sdk tool\n")
    real.chmod(0o755)
    (bindir / "tool").symlink_to(real)
    p = ResolvedProfile(name="t", safeBins={"tool": SafeBin(restrictedCommands=["delete"])},
                        exec=ExecPolicy(trustedDirs=[str(bindir)]))
    copy = tmp_path / "copy-of-tool"
    shutil.copy2(real, copy)
    d = check(p, bindir, [str(copy), "get"])
    assert d.rule_id == "exec.default" and "identity" not in d.details


def test_exec_allow_bare_name_judges_a_symlink_by_its_target(bindir: Path,
                                                              tmp_path: Path) -> None:
    """A symlink named `cat` outside the trusted dirs, pointing to /usr/bin/rm, is rm: the bare
    exec.allow entry `cat` must not allow it (before: allowed by exec.allow:cat)."""
    def allowing(name: str) -> ResolvedProfile:
        return ResolvedProfile(name="t", exec=ExecPolicy(
            allow=[name], trustedDirs=[str(bindir), "/usr/bin", "/bin"]))

    farm = tmp_path / "farm"
    farm.mkdir()
    (farm / "cat").symlink_to("/usr/bin/rm")
    d = check(allowing("cat"), bindir, [str(farm / "cat"), str(tmp_path / "nothing")])
    assert d.verdict is Verdict.BLOCK and d.rule_id == "exec.default", d
    assert d.binary == os.path.realpath("/usr/bin/rm")
    assert check(allowing("cat"), bindir, "cat x").rule_id == "exec.allow:cat"
    # a link that root put in a trusted dir keeps its name (alternatives: awk -> mawk)
    (bindir / "kitty").symlink_to("/usr/bin/cat")
    assert check(allowing("kitty"), bindir, "kitty x").rule_id == "exec.allow:kitty"


def test_lenient_examples_judge_an_outside_install_by_name(bindir: Path,
                                                           tmp_path: Path) -> None:
    """Examples describe the policy, not this machine: a program found only outside the
    trusted dirs is judged by name there (as a missing one is); a real check is not lenient."""
    elsewhere = tmp_path / "opt"
    elsewhere.mkdir()
    (elsewhere / "kubectl").symlink_to(bindir / "kubectl")  # a link: judged by the target
    sdk = tmp_path / "sdk"
    sdk.mkdir()
    k = sdk / "kubectl"
    k.write_text(f"#!/bin/sh\n# {tmp_path}: an sdk's kubectl\n")
    k.chmod(0o755)
    (elsewhere / "kubectl").unlink()
    (elsewhere / "kubectl").symlink_to(k)
    p = ResolvedProfile(name="t", safeBins={"kubectl": KUBECTL},
                        exec=ExecPolicy(trustedDirs=[str(bindir.parent / "none")]))
    strict = check_argv(p, ["kubectl", "get", "pods"], cwd="/", env_path=str(elsewhere))
    assert strict.rule_id == "exec.default" and "trusted directories" in strict.reason
    ex = check_argv(p, ["kubectl", "get", "pods"], cwd="/", env_path=str(elsewhere),
                    lenient=True)
    assert ex.rule_id == "safeBins.kubectl", ex


def test_copy_of_a_ruled_system_binary(bindir: Path, tmp_path: Path) -> None:
    p = profile(bindir)
    shutil.copy2("/usr/bin/rm", tmp_path / "tidy")
    d = check(p, bindir, [str(tmp_path / "tidy"), "-rf", "x"])
    assert d.verdict is Verdict.BLOCK and d.rule_id == "safeBins.rm.forbiddenFlags:-r"


def test_same_name_elsewhere_is_restricted_but_not_allowed(bindir: Path, tmp_path: Path) -> None:
    p = profile(bindir)
    fake = tmp_path / "evil" / "kubectl"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho not kubectl\n")
    fake.chmod(0o755)
    assert check(p, bindir, [str(fake), "delete", "x"]).rule_id == \
        "safeBins.kubectl.restrictedCommands:delete"
    d = check(p, bindir, [str(fake), "get", "pods"])  # passes the rule, but is not kubectl
    assert d.verdict is Verdict.BLOCK and d.rule_id == "exec.default"


def test_exec_gate_binary_overrides_argv0(bindir: Path) -> None:
    """`exec -a ls kubectl delete ...`: the kernel's binary decides, not argv[0]."""
    p = profile(bindir)
    d = check(p, bindir, "ls delete pod x", binary=str(bindir / "kubectl"))
    assert d.verdict is Verdict.BLOCK and d.rule_id == "safeBins.kubectl.restrictedCommands:delete"
    assert d.binary == str(bindir / "kubectl")


# -- multi-call binaries -----------------------------------------------------------------------
@pytest.fixture
def busybox() -> str:
    require(os.path.exists("/bin/busybox"), "busybox-static is installed by scripts/setup.sh")
    return "/bin/busybox"


def test_busybox_applets_are_judged_as_their_program(bindir: Path, busybox: str) -> None:
    p = profile(bindir, deny=["/usr/bin/shred"])
    d = check(p, bindir, "busybox rm -rf x")
    assert d.verdict is Verdict.BLOCK and d.rule_id == "safeBins.rm.forbiddenFlags:-r"
    assert d.binary == os.path.realpath(busybox) and d.details["applet"] == "rm"
    assert "busybox applet `rm`" in d.reason
    assert check(p, bindir, "busybox cat x").rule_id == "exec.allow:/usr/bin/cat"
    assert check(p, bindir, "busybox shred x").verdict is Verdict.DENY
    assert check(p, bindir, "busybox dd").rule_id == "exec.default"
    assert check(p, bindir, "busybox").rule_id == "exec.default"  # no applet: busybox itself
    assert check(p, bindir, "busybox busybox rm -r x").rule_id == "safeBins.rm.forbiddenFlags:-r"


def test_busybox_symlink_and_exec_a(bindir: Path, busybox: str, tmp_path: Path) -> None:
    p = profile(bindir)
    farm = tmp_path / "farm"
    farm.mkdir()
    (farm / "rm").symlink_to(busybox)
    d = check(p, bindir, [str(farm / "rm"), "-rf", "x"])
    assert d.rule_id == "safeBins.rm.forbiddenFlags:-r"
    copy = tmp_path / "bb-copy"
    shutil.copy2(busybox, copy)  # a renamed copy, started with argv[0] = "rm" (exec -a rm)
    d = check(p, bindir, "rm -r x", binary=str(copy))
    assert d.rule_id == "safeBins.rm.forbiddenFlags:-r"
    d = check(p, bindir, "kubectl delete x", binary=str(copy))  # applet of a name not installed
    assert d.rule_id == "safeBins.kubectl.restrictedCommands:delete"


# -- the dynamic loader run directly -----------------------------------------------------------
@pytest.mark.parametrize("loader", [LOADER, LOADER2])
def test_loader_judges_the_real_command(bindir: Path, loader: str) -> None:
    require(os.path.exists(loader), f"{loader} exists on x86_64 Debian")
    p = profile(bindir)
    k = str(bindir / "kubectl")
    d = check(p, bindir, [loader, k, "-n", "prod", "delete", "pod", "x"])
    assert d.verdict is Verdict.BLOCK and d.rule_id == "safeBins.kubectl.restrictedCommands:delete"
    assert d.reason.startswith("run through the dynamic loader") and d.details["loader"]
    d = check(p, bindir, [loader, "/usr/bin/rm", "-rf", "x"])
    assert d.rule_id == "safeBins.rm.forbiddenFlags:-r"
    assert check(p, bindir, [loader, "/usr/bin/cat", "x"]).rule_id == "exec.allow:/usr/bin/cat"
    for opt in ["--library-path", "--preload", "--audit", "--argv0", "--list", "--inhibit-cache"]:
        d = check(p, bindir, [loader, opt, "/tmp", "/usr/bin/cat"])
        assert d.verdict is Verdict.BLOCK and d.rule_id == "loader.option", opt
        assert opt in d.reason
    assert check(p, bindir, [loader, "cat"]).rule_id == "loader.program"


def test_loader_copy_by_content(bindir: Path, tmp_path: Path) -> None:
    require(os.path.exists(LOADER2), "the x86_64 loader exists")
    p = profile(bindir)
    copy = tmp_path / "helper"
    shutil.copy2(LOADER2, copy)
    assert check(p, bindir, [str(copy), "--preload", "x.so", "/usr/bin/cat"]).rule_id == \
        "loader.option"
    assert check(p, bindir, [str(copy), "/usr/bin/rm", "-r", "x"]).rule_id == \
        "safeBins.rm.forbiddenFlags:-r"


# -- not found, lenient, explain ---------------------------------------------------------------
def test_not_found_and_lenient(bindir: Path) -> None:
    p = ResolvedProfile(name="t", safeBins={"nosuchctl": KUBECTL},
                        exec=ExecPolicy(allow=["/usr/bin/frobnicate"], trustedDirs=["/usr/bin"]))
    with pytest.raises(CommandNotFound):
        check(p, bindir, "nosuchctl get pods")
    assert check(p, bindir, "nosuchctl get pods", lenient=True).rule_id == "safeBins.nosuchctl"
    assert check(p, bindir, "nosuchctl delete x", lenient=True).rule_id == \
        "safeBins.nosuchctl.restrictedCommands:delete"
    assert check(p, bindir, "frobnicate", lenient=True).rule_id == "exec.allow:/usr/bin/frobnicate"
    assert check(p, bindir, "other-missing", lenient=True).rule_id == "exec.default"


def test_empty_argv(bindir: Path) -> None:
    assert check(profile(bindir), bindir, []).rule_id == "argv.empty"


def test_explain_lists_the_steps(bindir: Path) -> None:
    p = profile(bindir)
    steps = explain(p, ["kubectl", "-n", "prod", "get", "pods"], cwd=str(bindir),
                    env_path=str(bindir))
    text = "\n".join(steps)
    assert "resolves to" in text and "safeBins.kubectl applies" in text
    assert "operands ['get', 'pods']" in text
    assert steps[-1].startswith("=> ALLOW by safeBins.kubectl")
    steps = explain(p, ["missing-xyz"], env_path=str(bindir))
    assert steps[-1].startswith("=> not found")


def test_decision_is_fast_enough_to_call_per_exec(bindir: Path) -> None:
    """Not a timing test: the warm path must not hash or re-parse (caches are hit)."""
    p = profile(bindir)
    check(p, bindir, "kubectl get pods -n prod")
    n_hashes = len(resolve._HASHES)
    for _ in range(50):
        check(p, bindir, "kubectl get pods -n prod")
    assert len(resolve._HASHES) == n_hashes
