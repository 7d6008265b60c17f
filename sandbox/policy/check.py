"""The one decision function of glassbreak: the pre-check and the exec gate both call check_argv.

Order of evaluation for `argv` under a resolved profile:

0. resolve the program (execvp rules, or the path the kernel is about to exec); the dynamic loader
   run directly judges argv[1:] instead (any loader option blocks: `loader.option`); a multi-call
   binary (busybox) judges its applet as the program it names (see sandbox.policy.resolve);
1. `exec.deny` patterns -> deny (matched against the path as found AND the realpath);
2. the safeBins rules that apply to the binary (by path, name in a trusted dir judged by the
   symlink's target, or content hash; see sandbox.policy.resolve) -> the strictest violation
   blocks or denies; a ruled binary that passes its rule is allowed without an exec.allow entry;
3. `exec.block` patterns -> block;
4. `exec.allow` patterns -> allow (matched against the realpath; exact entries are compared after
   realpath, so "/bin/sh" also allows /usr/bin/dash when it points there);
5. `exec.default`.

Patterns are fnmatch globs over absolute paths (the directory part of a pattern is also tried
after realpath, so "/bin/*grep" matches /usr/bin/grep), or bare names matched against the
binary's name. exec.deny and exec.block match every name (the path's as found, the target's);
exec.allow matches only a binary whose real path lies in a trusted directory, by the target's
name, or by the symlink's name when the symlink lies in a trusted directory too (a symlink
named `cat` in /tmp pointing to /usr/bin/rm is rm).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

from sandbox.errors import CommandNotFound
from sandbox.policy.argv import DIALECT_NAMES, Violation, parse
from sandbox.policy.decision import Decision, Verdict
from sandbox.policy.profile import ResolvedProfile
from sandbox.policy.resolve import (
    Identity,
    ResolvedProgram,
    applet_argv,
    identify,
    in_trusted_dir,
    is_loader,
    multicall_by_content,
    multicall_name,
    program_at,
    realpath_cached,
    resolve_program,
    sha256_file,
    trusted_set,
    ttl_cached,
    unique_trusted_dirs,
)

MAX_DEPTH = 4
_GLOB = frozenset("*?[")


@dataclass(frozen=True)
class _Subject:
    """What a decision is about: the binary's paths and names and the rules that apply."""

    deny_paths: tuple[str, ...]
    allow_paths: tuple[str, ...]
    names: tuple[str, ...]  # every name it goes by (exec.deny / exec.block)
    allow_names: tuple[str, ...]  # the names a bare exec.allow entry may match
    trusted: bool  # its real path lies in a trusted directory
    identities: tuple[Identity, ...]
    binary: str | None
    path_as_found: str | None


def _has_glob(s: str) -> bool:
    return not _GLOB.isdisjoint(s)


def _variants(pattern: str) -> tuple[str, ...]:
    """The pattern, and the pattern with its (glob-free) directory part realpath-ed."""
    def build() -> tuple[str, ...]:
        d, base = os.path.split(pattern)
        if not d or _has_glob(d):
            return (pattern,)
        alt = os.path.join(os.path.realpath(d), base)
        return (pattern,) if alt == pattern else (pattern, alt)
    return ttl_cached(("pattern", pattern), build)


def _match_deny(pattern: str, s: _Subject) -> bool:
    if "/" not in pattern:
        return any(fnmatch_(n, pattern) for n in s.names)
    return any(fnmatch_(p, v) for v in _variants(pattern) for p in s.deny_paths)


def _match_allow(pattern: str, s: _Subject) -> bool:
    if "/" not in pattern:
        return s.trusted and any(fnmatch_(n, pattern) for n in s.allow_names)
    if not _has_glob(pattern):
        return pattern in s.allow_paths or realpath_cached(pattern) in s.allow_paths
    return any(fnmatch_(p, v) for v in _variants(pattern) for p in s.allow_paths)


def fnmatch_(name: str, pattern: str) -> bool:
    from fnmatch import fnmatchcase

    return fnmatchcase(name, pattern)


def _subject(profile: ResolvedProfile, prog: ResolvedProgram,
             extra_deny: tuple[str, ...] = ()) -> _Subject:
    dirs = profile.exec.trustedDirs
    ids = identify(tuple(profile.safeBins), dirs, prog)
    ts = trusted_set(dirs)
    found, real = prog.path_as_found.rpartition("/")[2], prog.realpath.rpartition("/")[2]
    return _Subject(
        deny_paths=(prog.path_as_found, prog.realpath, *extra_deny),
        allow_paths=(prog.realpath,),
        names=(found, real),
        allow_names=(real, found) if in_trusted_dir(prog.path_as_found, ts) else (real,),
        trusted=in_trusted_dir(prog.realpath, ts),  # judged by the target, never the link
        identities=tuple(ids), binary=prog.realpath, path_as_found=prog.path_as_found,
    )


def _virtual_subject(profile: ResolvedProfile, name: str, cwd: str, trusted_code: bool,
                     extra_deny: tuple[str, ...] = ()) -> _Subject:
    """A program that is not on disk, judged by name (lenient examples, busybox applets)."""
    dirs = profile.exec.trustedDirs
    if "/" in name:
        paths: tuple[str, ...] = (os.path.normpath(os.path.join(cwd, name)),)
    else:
        paths = tuple(os.path.join(d, name) for d in unique_trusted_dirs(dirs)) or (name,)
    ids = identify(tuple(profile.safeBins), dirs, ResolvedProgram(paths[0], paths[0]))
    if not trusted_code:
        ids = [Identity(i.key, i.how, False) for i in ids]
    return _Subject(
        deny_paths=(*paths, *extra_deny), allow_paths=paths if trusted_code else (),
        names=(os.path.basename(name),), allow_names=(os.path.basename(name),),
        trusted=trusted_code and in_trusted_dir(paths[0], trusted_set(dirs)),
        identities=tuple(ids), binary=paths[0], path_as_found=paths[0],
    )


class _Checker:
    def __init__(self, profile: ResolvedProfile, trace: list[str] | None) -> None:
        self.p = profile
        self.trace = trace

    def note(self, text: str) -> None:
        if self.trace is not None:
            self.trace.append(text)

    def decide(self, verdict: Verdict, rule_id: str, reason: str, argv: Sequence[str],
               s: _Subject | None, **details: str) -> Decision:
        if self.trace is not None:
            self.note(f"=> {verdict.value.upper()} by {rule_id}: {reason}")
        if s is not None and s.identities:
            details["identity"] = "; ".join(f"{i.key}: {i.how}" for i in s.identities)
        if s is not None and s.path_as_found:
            details["path"] = s.path_as_found
        return Decision(verdict, rule_id, reason, tuple(argv), s.binary if s else None, details)

    # -- entry -----------------------------------------------------------------------------------
    def check(self, argv: Sequence[str], cwd: str, env_path: str | None, binary: str | None,
              lenient: bool, depth: int = 0, in_applet: bool = False) -> Decision:
        if not argv or (not argv[0] and binary is None):
            return self.decide(Verdict.BLOCK, "argv.empty", "the command line is empty", argv,
                               None)
        if depth > MAX_DEPTH:
            return self.decide(Verdict.BLOCK, "argv.nesting", "too many nested loaders or "
                               "multi-call applets to judge the command", argv, None)
        if binary is not None:
            prog: ResolvedProgram | None = program_at(os.path.join(cwd, binary))
            if self.trace is not None:
                self.note(f"program: {binary} (given by the exec gate), realpath "
                          f"{prog.realpath if prog else '?'}")
        else:
            try:
                prog = resolve_program(argv[0], env_path, cwd)
                if self.trace is not None:
                    self.note(f"program: `{argv[0]}` resolves to {prog.path_as_found}"
                              + (f" -> {prog.realpath}" if prog.realpath != prog.path_as_found
                                 else ""))
            except CommandNotFound:
                if not lenient:
                    raise
                prog = None
                if self.trace is not None:
                    self.note(f"program: `{argv[0]}` not found here; judged by name (lenient)")
            if lenient and prog is not None and "/" not in argv[0] and not in_trusted_dir(
                    prog.realpath, trusted_set(self.p.exec.trustedDirs)):
                # examples describe the policy, not this machine's installs: a program found
                # only outside the trusted dirs (or through a symlink to there) is judged as
                # the program of that name in a trusted dir, as a missing one is
                prog = None
                if self.trace is not None:
                    self.note(f"program: `{argv[0]}` lies outside the trusted directories here; "
                              "judged by name (lenient)")
        if prog is None:
            return self.judge(_virtual_subject(self.p, argv[0], cwd, True), argv)
        if self.p.grantedCommands and depth == 0:
            granted = _granted(self.p, argv, prog)
            if granted is not None:
                if self.trace is not None:
                    self.note(f"exactly the command approved in grant {granted}")
                return self.decide(Verdict.ALLOW, f"grant:{granted}",
                                   f"exactly the command approved in grant {granted}", argv,
                                   _subject(self.p, prog))
        if is_loader(prog):
            return self.loader(prog, argv, cwd, env_path, lenient, depth)
        if not in_applet:
            mc = multicall_name(prog, self.p.exec.trustedDirs)
            if mc is not None:
                return self.applet(prog, mc, argv, cwd, lenient, depth)
        return self.judge(_subject(self.p, prog), argv)

    # -- the dynamic loader and multi-call binaries ----------------------------------------------
    def loader(self, prog: ResolvedProgram, argv: Sequence[str], cwd: str,
               env_path: str | None, lenient: bool, depth: int) -> Decision:
        s = _subject(self.p, prog)
        if self.trace is not None:
            self.note(f"{prog.realpath} is the dynamic loader: argv[1:] is judged as the command")
        for pat in self.p.exec.deny:
            if _match_deny(pat, s):
                return self.decide(Verdict.DENY, f"exec.deny:{pat}", f"`{prog.path_as_found}` "
                                   f"matches the exec.deny entry `{pat}`", argv, s)
        args = list(argv[1:])
        if not args:
            return self.judge(s, argv)
        if args[0].startswith("-"):
            return self.decide(Verdict.BLOCK, "loader.option", f"`{args[0]}` is an option of "
                               "the dynamic loader run directly; loader options (library path, "
                               "preload, audit, argv0) are not allowed", argv, s)
        if "/" not in args[0]:
            return self.decide(Verdict.BLOCK, "loader.program", f"the dynamic loader would "
                               f"search library paths for `{args[0]}`; run the program by its "
                               "path instead", argv, s)
        inner = self.check(args, cwd, env_path, args[0], lenient, depth + 1)
        return Decision(inner.verdict, inner.rule_id,
                        f"run through the dynamic loader: {inner.reason}", tuple(argv),
                        inner.binary, {**inner.details, "loader": prog.realpath})

    def applet(self, prog: ResolvedProgram, mc: str, argv: Sequence[str], cwd: str,
               lenient: bool, depth: int) -> Decision:
        own = _subject(self.p, prog)
        sub = applet_argv(argv, mc)
        if sub is None:
            if self.trace is not None:
                self.note(f"{prog.realpath} is the multi-call binary {mc}, run without an applet")
            return self.judge(own, argv)
        applet = sub[0]
        if self.trace is not None:
            self.note(f"{prog.realpath} is the multi-call binary {mc}: applet `{applet}` is judged "
                      f"as the program `{applet}`")
        for pat in self.p.exec.deny:
            if _match_deny(pat, own):
                return self.decide(Verdict.DENY, f"exec.deny:{pat}", f"`{prog.path_as_found}` "
                                   f"matches the exec.deny entry `{pat}`", argv, own)
        dirs = self.p.exec.trustedDirs
        # the applet may run as its namesake only if this is trusted multi-call code: in a
        # trusted dir, or the same content as a multi-call binary found in one
        trusted_code = own.trusted or multicall_by_content(prog, dirs) is not None
        namesake: ResolvedProgram | None
        try:
            namesake = resolve_program(applet, ":".join(unique_trusted_dirs(dirs)), "/")
        except CommandNotFound:
            namesake = None
        extra = (prog.path_as_found, prog.realpath)
        if namesake is not None and multicall_name(namesake, dirs) is None:
            if self.trace is not None:
                self.note(f"applet `{applet}` is judged as {namesake.realpath}")
            s = _subject(self.p, namesake, extra)
            if not trusted_code:
                s = replace(s, allow_paths=(), trusted=False, identities=tuple(
                    Identity(i.key, i.how, False) for i in s.identities), binary=prog.realpath)
            else:
                s = replace(s, binary=prog.realpath)
        else:
            s = _virtual_subject(self.p, applet, cwd, trusted_code, extra)
            s = replace(s, binary=prog.realpath)
        d = self.judge(s, sub)
        return Decision(d.verdict, d.rule_id, f"{mc} applet `{applet}`: {d.reason}",
                        tuple(argv), d.binary, {**d.details, "applet": applet})

    # -- the rules -------------------------------------------------------------------------------
    def judge(self, s: _Subject, argv: Sequence[str]) -> Decision:
        ex = self.p.exec
        shown = s.path_as_found or argv[0]
        for pat in ex.deny:
            if _match_deny(pat, s):
                return self.decide(Verdict.DENY, f"exec.deny:{pat}", f"`{shown}` matches the "
                                   f"exec.deny entry `{pat}` (never allowed)", argv, s)
        worst: tuple[str, Violation] | None = None
        allowed_by: str | None = None
        for ident in s.identities:
            if self.trace is not None:
                self.note(f"safeBins.{ident.key} applies: the binary {ident.describe()}")
            rule = self.p.safeBins[ident.key]
            res = parse(rule, argv[1:], ident.key, trace=self.trace is not None)
            if self.trace is not None:
                self.note("  argv model: " + (f"dialect {rule.dialect}" if rule.dialect else
                                              "no dialect named, every model must pass"))
                for r in res.models if res.violation is None else ():
                    cmd = f"subcommand `{' '.join(r.command)}`, " if r.command else ""
                    self.note(f"  parsed as {DIALECT_NAMES[r.model]}: {cmd}flags {list(r.flags)}"
                              f", operands {list(r.operands)} ({r.states} parser states)")
            v = res.violation
            if v is not None and (worst is None or v.rank > worst[1].rank):
                worst = (ident.key, v)
            elif v is None and ident.grants_allow and allowed_by is None:
                allowed_by = ident.key
        if worst is not None:
            key, v = worst
            rid = f"safeBins.{key}.{v.kind}" + (
                "" if v.kind in ("minPositional", "maxPositional") else f":{v.subject}")
            return self.decide(Verdict(v.verdict), rid, v.reason, argv, s)
        if allowed_by is not None:
            return self.decide(Verdict.ALLOW, f"safeBins.{allowed_by}", f"`{argv[0]}` passes "
                               f"its safeBins rule `{allowed_by}`", argv, s)
        for pat in ex.block:
            if _match_deny(pat, s):
                return self.decide(Verdict.BLOCK, f"exec.block:{pat}", f"`{shown}` matches the "
                                   f"exec.block entry `{pat}`", argv, s)
        for pat in ex.allow:
            if _match_allow(pat, s):
                return self.decide(Verdict.ALLOW, f"exec.allow:{pat}", f"`{shown}` is allowed "
                                   f"by the exec.allow entry `{pat}`", argv, s)
        verdict = Verdict(ex.default)
        what = {"allow": "allows", "block": "blocks (escalatable)", "deny": "denies"}[ex.default]
        why = ""
        named = [i.key for i in s.identities if i.how == "untrusted-name"]
        if named and verdict is not Verdict.ALLOW:
            where = f"is a symlink to {s.binary}, which lies" if s.binary and \
                s.binary != s.path_as_found else "lies"
            why = (f"; it passes the safeBins rule `{named[0]}` but {where} outside the trusted "
                   "directories (exec.trustedDirs), so the rule restricts it without allowing "
                   "it: trust that directory in the root profile, or key the rule by the path")
        return self.decide(verdict, "exec.default", f"`{shown}` matches no exec.allow entry "
                           f"and the profile's exec.default {what} other programs{why}", argv, s)


def _granted(profile: ResolvedProfile, argv: Sequence[str], prog: ResolvedProgram) -> str | None:
    """The id of a command grant for exactly this argv and binary content, if any.

    argv[0] may be spelled differently by the layers (`kubectl` at the pre-check, the script
    path `/usr/local/bin/kubectl` in the kernel's view), so it is compared by name, and the
    program itself by content hash when the grant recorded one."""
    for g in profile.grantedCommands:
        if not g.argv or list(argv[1:]) != g.argv[1:] \
                or os.path.basename(argv[0]) != os.path.basename(g.argv[0]):
            continue
        if g.binary_sha256 is not None:
            try:
                if sha256_file(prog.realpath) != g.binary_sha256:
                    continue
            except OSError:
                continue
        return g.grant_id
    return None


def check_argv(profile: ResolvedProfile, argv: Sequence[str], *, cwd: str | None = None,
               env_path: str | None = None, binary: str | None = None,
               lenient: bool = False) -> Decision:
    """Decide whether `argv` may run under `profile` (allow / block / deny, rule id, reason).

    `binary`: the absolute path the kernel is about to exec (exec gate); otherwise argv[0] is
    resolved like execvp with `env_path` (default: this process's PATH) from `cwd`.
    `lenient`: a program named by a bare name that is missing on this machine, or found only
    outside the trusted directories, is judged by name as if it were in one (profile examples)
    instead of raising CommandNotFound / being judged as found. Pure apart from cached,
    read-only file-system look-ups."""
    path = os.environ.get("PATH") if env_path is None else env_path
    return _Checker(profile, None).check(argv, cwd or os.getcwd(), path, binary, lenient)


def explain(profile: ResolvedProfile, argv: Sequence[str], *, cwd: str | None = None,
            env_path: str | None = None, binary: str | None = None,
            lenient: bool = False) -> list[str]:
    """The steps check_argv takes for `argv`, one line each, ending with the decision."""
    steps: list[str] = [f"profile {profile.name}: checking {list(argv)}"]
    path = os.environ.get("PATH") if env_path is None else env_path
    try:
        _Checker(profile, steps).check(argv, cwd or os.getcwd(), path, binary, lenient)
    except CommandNotFound as e:
        steps.append(f"=> not found: {e.message}")
    return steps
