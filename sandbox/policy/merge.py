"""Profile `extends` merging: pure code, no I/O.
Why this module is long: `extends` merging, one short function per profile section, all under the
merge rules stated once below.

`extends` merge semantics (child onto its merged parent; several parents are first merged left
to right the same way, as if each later one extended the earlier):
  Without `relax: true` a child can only ADD restrictions:
  - safeBins, per binary: forbiddenFlags, deniedFlags, restrictedCommands, deniedCommands,
    valueFlags: union. Allowlists (allowedValueFlags, allowedFlags, allowedCommands): intersect
    when both define them (an entry `--f=v` or `cmd sub` narrows `--f` or `cmd`); a child may
    introduce an allowlist where its parent had none. min/maxPositional: the stricter.
    onViolation: the stricter (deny > block). dialect: the parent's; a child naming another
    one (or one where the parent named none) gets every argv model. A new binary is fine unless
    the parent has an exec.allow list that does not cover it (error).
  - exec.allow: the first profile of a chain that lists programs defines the allowlist; below
    it a child's list replaces it, and every child entry must be covered by a parent entry
    (equal, a literal matched by a parent glob, or narrower than a parent `prefix*`), else an
    error. exec.deny / exec.block: union. exec.default: the stricter (deny > block > allow).
    allowFileless: may only be turned off. trustedDirs: intersection.
  - seccomp: rules concatenated (parent first); per syscall the stricter unconditional action
    wins (kill_process > kill_thread > trap > errno > notify > log > allow; equal rank: the
    child's), conditional rules on a syscall with an equal-or-stricter unconditional rule are
    dropped. defaultAction: the stricter.
  - filesystem: read, write, execute: the first profile of a chain that lists one defines it
    (until then the defaults apply: read ["/"], write ["$CWD", "$TMPDIR"], execute none); below
    it a child's list replaces it, and every child entry must be covered by a parent entry (the
    same path or beneath it; a read entry may also be covered by a parent write entry), else an
    error. hidden: union. default: the stricter (deny > block). The one way a child re-opens
    something: a read or write entry beneath a parent's hidden entry (the deepest entry wins),
    which is how a profile grants e.g. ~/.kube/config that base hides (docs/profiles.md).
  - owners: union. escalation: inherited field-wise (the child's given fields win), except
    maxTtl, which can only shrink (ttl is clamped to it).
  - credentials: a child adds credentials; replacing one its parent defines (same name, other
    definition) needs `relax: true` (the escalated tier lives in the relaxed profile);
    `NAME: null` removes an inherited one. Two credentials may not set the same variable or
    file. Each remembers the file that defined it (only trusted files may carry sources).
  - examples (profile, exec and per-safeBin): union; all are checked against the final profile.
  - network.default: the stricter (deny > block > allow). network.allow / network.unix: the
    first profile of a chain that lists entries defines the list; below it a child's list
    replaces it and every child entry must be covered by a parent entry (the same name, a name
    under a parent `*.` wildcard, a CIDR inside a parent CIDR, ports within the parent's range,
    the same protocol or a parent `any:`), else an error (as exec.allow), unless the parent's
    default is allow.
  With `relax: true` the child's values replace the parent's where given (per safeBins binary
  and per field; exec and escalation per field; seccomp rules and owners as a whole), and the
  parents' examples are not re-checked (they describe the stricter profile); the relaxing
  profile brings its own examples, which are checked. `relaxedProfile` naming the profile
  itself is dropped.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from sandbox.errors import ProfileError
from sandbox.policy.filesystem import DEFAULT_WRITE, covers
from sandbox.policy.profile import (
    Credential,
    EscalationPolicy,
    Examples,
    ExecPolicy,
    FilesystemPolicy,
    NetworkPolicy,
    Profile,
    ResolvedProfile,
    SafeBin,
    SeccompPolicy,
    SeccompRule,
    _check_credential_set,
    parse_duration,
)

if TYPE_CHECKING:
    from sandbox.policy.source import Source

_EXEC_RANK = {"allow": 0, "block": 1, "deny": 2}


def _action_rank(action: str) -> int:
    a = action.split(":", 1)[0]
    return {"allow": 0, "log": 1, "notify": 2, "errno": 3, "trap": 4, "kill_thread": 5,
            "kill": 5, "kill_process": 6}.get(a, 6)


def _stricter_action(a: str, b: str) -> str:
    return b if _action_rank(b) >= _action_rank(a) else a


def _union(a: list[str], b: list[str]) -> list[str]:
    return list(dict.fromkeys([*a, *b]))


def _narrows(entry: str, broad: str, sep: str) -> bool:
    return entry == broad or entry.startswith(broad + sep)


def _intersect(parent: list[str] | None, child: list[str] | None, sep: str) -> list[str] | None:
    """Allowlist intersection; `--f=v` narrows `--f`, `cmd sub` narrows `cmd`."""
    if parent is None or child is None:
        return child if parent is None else parent
    out = [c for c in child if any(_narrows(c, p, sep) for p in parent)]
    out += [p for p in parent if p not in out and any(_narrows(p, c, sep) for c in child)]
    return out


def _given(m: BaseModel, name: str) -> bool:
    return name in m.model_fields_set


def _merge_safebin(parent: SafeBin, child: SafeBin, relax: bool) -> SafeBin:
    if relax:
        upd = {k: getattr(child, k) for k in child.model_fields_set}
        return parent.model_copy(update=upd)
    had_allowlist = parent.has_flag_allowlist
    upd2: dict[str, Any] = {}
    for k in ("forbiddenFlags", "deniedFlags", "restrictedCommands", "deniedCommands",
              "valueFlags"):
        upd2[k] = _union(getattr(parent, k), getattr(child, k))
    for k in ("allowedValueFlags", "allowedFlags"):
        if _given(child, k):
            p = getattr(parent, k)
            upd2[k] = _intersect(p if p is not None or not had_allowlist else [],
                                 getattr(child, k), "=")
    if _given(child, "allowedCommands"):
        upd2["allowedCommands"] = _intersect(parent.allowedCommands, child.allowedCommands, " ")
    mins = [v for v in (parent.minPositional, child.minPositional) if v is not None]
    maxs = [v for v in (parent.maxPositional, child.maxPositional) if v is not None]
    upd2["minPositional"] = max(mins) if mins else None
    upd2["maxPositional"] = min(maxs) if maxs else None
    upd2["onViolation"] = "deny" if "deny" in (parent.onViolation, child.onViolation) else "block"
    if _given(child, "dialect") and child.dialect != parent.dialect:
        upd2["dialect"] = None  # naming another (or a first) dialect would drop readings
    upd2["description"] = child.description or parent.description
    ex = parent.examples
    upd2["examples"] = ex.model_copy(update={
        k: _union(getattr(ex, k), getattr(child.examples, k)) for k in ("allow", "block", "deny")})
    return parent.model_copy(update=upd2)


def _covered(entry: str, allow: list[str], trusted: list[str], some_dir: bool = False) -> bool:
    """Is every program `entry` (path, glob or bare name) matches also matched by `allow`?
    (`some_dir`: a bare name is covered when one trusted-dir spelling of it is matched.)"""
    meta = any(c in entry for c in "*?[")
    for p in allow:
        if entry == p:
            return True
        if meta:
            head = p[:-1]
            if p.endswith("*") and not any(c in head for c in "*?[") and entry.startswith(head):
                return True
            continue
        if "/" in entry:
            if fnmatch.fnmatchcase(entry, p):
                return True
            if "/" not in p and os.path.dirname(entry) in trusted and fnmatch.fnmatchcase(
                    os.path.basename(entry), p):
                return True
        elif "/" not in p and fnmatch.fnmatchcase(entry, p):
            return True
        elif "/" in p and (any if some_dir else all)(
                fnmatch.fnmatchcase(f"{d}/{entry}", p) for d in trusted):
            return True
    return False


def _merge_exec(parent: ExecPolicy, child: ExecPolicy, relax: bool, src: Source,
                parent_bins: Iterable[str], child_bins: Iterable[str]) -> ExecPolicy:
    if relax:
        return parent.model_copy(update={k: getattr(child, k) for k in child.model_fields_set})
    upd: dict[str, Any] = {}
    guarded = bool(parent.allow) and parent.default != "allow"
    if _given(child, "allow"):
        if guarded:
            for i, e in enumerate(child.allow):
                if not _covered(e, parent.allow, parent.trustedDirs):
                    raise ProfileError(
                        f"{src.where(('exec', 'allow', i))}: exec.allow[{i}]: {e!r} is not "
                        f"allowed by the profile this one extends (it allows: "
                        f"{', '.join(parent.allow)})",
                        hint="a child can only narrow exec.allow; remove the entry, or set "
                        "`relax: true` if this profile is meant to loosen its parent")
        upd["allow"] = list(child.allow)
    if guarded:
        for b in child_bins:
            if b not in parent_bins and not _covered(b, parent.allow, parent.trustedDirs, True):
                raise ProfileError(
                    f"{src.where(('safeBins', b))}: safeBins.{b}: adds a program that the "
                    "profile this one extends does not allow",
                    hint="add it to the parent's exec.allow, or set `relax: true`")
    upd["deny"] = _union(parent.deny, child.deny)
    upd["block"] = _union(parent.block, child.block)
    upd["default"] = max(parent.default, child.default, key=_EXEC_RANK.__getitem__) \
        if _given(child, "default") else parent.default
    if _given(child, "allowFileless"):
        if child.allowFileless and not parent.allowFileless:
            raise ProfileError(
                f"{src.where(('exec', 'allowFileless'))}: exec.allowFileless: cannot turn "
                "fileless exec on in a profile that extends one where it is off",
                hint="set `relax: true` if this profile is meant to loosen its parent")
        upd["allowFileless"] = child.allowFileless
    if _given(child, "trustedDirs"):
        upd["trustedDirs"] = [d for d in child.trustedDirs if d in parent.trustedDirs]
    upd["examples"] = parent.examples.model_copy(update={
        k: _union(getattr(parent.examples, k), getattr(child.examples, k))
        for k in ("allow", "block", "deny")})
    return parent.model_copy(update=upd)


def _merge_seccomp(parent: SeccompPolicy, child: SeccompPolicy, relax: bool) -> SeccompPolicy:
    if relax:
        return parent.model_copy(update={k: getattr(child, k) for k in child.model_fields_set})
    rules = [*parent.rules, *child.rules]
    best: dict[str, str] = {}
    for r in rules:
        if not r.args:
            for s in r.syscalls:
                best[s] = _stricter_action(best[s], r.action) if s in best else r.action
    out: list[SeccompRule] = []
    taken: set[str] = set()  # a syscall appears in one unconditional rule only
    for r in reversed(rules):  # equal rank: the later (child's) rule wins
        if r.args:
            keep = [s for s in r.syscalls
                    if s not in best or _action_rank(best[s]) < _action_rank(r.action)]
        else:
            keep = [s for s in r.syscalls if s not in taken and best[s] == r.action]
            taken.update(keep)
        if keep:
            out.append(r if keep == r.syscalls else r.model_copy(update={"syscalls": keep}))
    out.reverse()
    default = _stricter_action(parent.defaultAction, child.defaultAction) \
        if _given(child, "defaultAction") else parent.defaultAction
    return SeccompPolicy(defaultAction=default, rules=out)


def _merge_filesystem(parent: FilesystemPolicy, child: FilesystemPolicy, relax: bool,
                      src: Source) -> FilesystemPolicy:
    if relax:
        return parent.model_copy(update={k: getattr(child, k) for k in child.model_fields_set})
    upd: dict[str, Any] = {}
    for key in ("read", "write", "execute"):
        mine: list[str] | None = getattr(child, key)
        if mine is None:
            continue
        theirs: list[str] | None = getattr(parent, key)
        if theirs is not None:
            cover = theirs + (list(DEFAULT_WRITE if parent.write is None else parent.write)
                              if key == "read" else [])
            for i, e in enumerate(mine):
                if not any(covers(p, e) for p in cover):
                    raise ProfileError(
                        f"{src.where(('filesystem', key, i))}: filesystem.{key}[{i}]: {e!r} is "
                        f"not covered by the profile this one extends (its filesystem.{key}: "
                        f"{', '.join(theirs) or 'none'})",
                        hint="a child can only narrow filesystem rules: name a path beneath "
                        "one of the parent's, or set `relax: true` if this profile is meant to "
                        "loosen its parent")
        upd[key] = list(mine)
    upd["hidden"] = _union(parent.hidden, child.hidden)
    if _given(child, "default") and child.default == "deny":
        upd["default"] = "deny"
    return parent.model_copy(update=upd)


def _merge_escalation(parent: EscalationPolicy, child: EscalationPolicy, relax: bool,
                      src: Source) -> EscalationPolicy:
    upd = {k: getattr(child, k) for k in child.model_fields_set}
    if not relax and "maxTtl" in upd and parse_duration(upd["maxTtl"]) > parent.max_ttl_seconds:
        upd["maxTtl"] = parent.maxTtl
    max_s = parse_duration(upd.get("maxTtl", parent.maxTtl))
    if "ttl" not in upd and parent.ttl_seconds > max_s:
        upd["ttl"] = upd.get("maxTtl", parent.maxTtl)
    try:
        return EscalationPolicy.model_validate({**parent.model_dump(), **upd})
    except ValidationError as e:
        raise ProfileError(f"{src.where(('escalation',))}: escalation: "
                           f"{e.errors()[0]['msg']} (after merging with the parent)",
                           hint="make ttl <= maxTtl") from None


def _merge_credentials(parent: ResolvedProfile, child: Profile, src: Source
                       ) -> tuple[dict[str, Credential], dict[str, str]]:
    creds = dict(parent.credentials)
    origins = dict(parent.credentialOrigins)
    for name, c in (child.credentials or {}).items():
        where = src.where(("credentials", name))
        if c is None:
            if name not in creds:
                raise ProfileError(
                    f"{where}: credentials.{name}: null removes an inherited credential, but "
                    f"the profile this one extends has none named {name}"
                    + (f" (it has: {', '.join(creds)})" if creds else ""),
                    hint="remove the line, or fix the name")
            del creds[name]
            origins.pop(name, None)
            continue
        if name in creds and creds[name] == c:
            continue  # the same definition: the parent's stays (and its origin)
        if name in creds and not child.relax:
            raise ProfileError(
                f"{where}: credentials.{name}: replaces the credential {name} of the profile "
                "this one extends",
                hint="give it another name, or set `relax: true` if this profile is meant to "
                "loosen its parent (the escalated tier belongs in the relaxed profile)")
        creds[name] = c
        origins[name] = str(src.path)
    try:
        _check_credential_set(creds)
    except ValueError as e:
        raise ProfileError(f"{src.where(('credentials',))}: credentials: {e} (after merging "
                           "with the parent)",
                           hint="use another variable or fileName, or remove one with "
                           "`NAME: null`") from None
    return creds, origins


def _merge_network(parent: NetworkPolicy, child: NetworkPolicy, relax: bool,
                   src: Source) -> NetworkPolicy:
    from sandbox.policy.network import covered, parse_allow

    if relax:
        return parent.model_copy(update={k: getattr(child, k) for k in child.model_fields_set})
    upd: dict[str, Any] = {}
    if _given(child, "default"):
        upd["default"] = max(parent.default, child.default, key=_EXEC_RANK.__getitem__)
    open_default = parent.default == "allow"
    if _given(child, "allow"):
        if parent.allow and not open_default:
            mine = [parse_allow(e) for e in parent.allow]
            for i, e in enumerate(child.allow):
                if not covered(parse_allow(e), mine):
                    raise ProfileError(
                        f"{src.where(('network', 'allow', i))}: network.allow[{i}]: {e!r} is "
                        f"not allowed by the profile this one extends (it allows: "
                        f"{', '.join(parent.allow)})",
                        hint="a child can only narrow network.allow; remove the entry, or set "
                        "`relax: true` if this profile is meant to loosen its parent")
        upd["allow"] = list(child.allow)
    if _given(child, "unix"):
        if parent.unix and not open_default:
            for i, e in enumerate(child.unix):
                if e not in parent.unix:
                    raise ProfileError(
                        f"{src.where(('network', 'unix', i))}: network.unix[{i}]: {e!r} is not "
                        f"allowed by the profile this one extends (it allows: "
                        f"{', '.join(parent.unix)})",
                        hint="a child can only narrow network.unix; remove the entry, or set "
                        "`relax: true`")
        upd["unix"] = list(child.unix)
    return parent.model_copy(update=upd)


def merge(parent: ResolvedProfile, child: Profile, src: Source) -> ResolvedProfile:
    relax = child.relax
    bins = dict(parent.safeBins)
    for name, rule in child.safeBins.items():
        bins[name] = _merge_safebin(bins[name], rule, relax) if name in bins else rule
    if relax:  # the parents' examples describe the stricter profile: not re-checked
        bins = {b: r.model_copy(update={"examples": child.safeBins[b].examples
                                        if b in child.safeBins else Examples()})
                for b, r in bins.items()}
    exec_ = parent.exec if child.exec is None else _merge_exec(
        parent.exec, child.exec, relax, src, parent.safeBins, child.safeBins)
    if child.exec is None and not relax and parent.exec.allow and parent.exec.default != "allow":
        _merge_exec(parent.exec, ExecPolicy(), False, src, parent.safeBins, child.safeBins)
    if relax:
        exec_ = exec_.model_copy(update={
            "examples": child.exec.examples if child.exec else Examples()})
    seccomp = parent.seccomp if child.seccomp is None else _merge_seccomp(
        parent.seccomp, child.seccomp, relax)
    fs = parent.filesystem if child.filesystem is None else _merge_filesystem(
        parent.filesystem, child.filesystem, relax, src)
    esc = parent.escalation if child.escalation is None else _merge_escalation(
        parent.escalation, child.escalation, relax, src)
    network = parent.network if child.network is None else _merge_network(
        parent.network, child.network, relax, src)
    if relax and esc.relaxedProfile == child.name:
        esc = esc.model_copy(update={"relaxedProfile": None})
    if relax and _given(child, "owners"):
        owners = list(child.owners)
    else:
        owners = _union(parent.owners, child.owners)
    ex = parent.examples
    examples = child.examples if relax else ex.model_copy(update={
        k: _union(getattr(ex, k), getattr(child.examples, k)) for k in ("allow", "block", "deny")})
    creds, origins = _merge_credentials(parent, child, src)
    return ResolvedProfile(
        name=child.name, description=child.description or parent.description,
        chain=[child.name, *parent.chain], sources=[str(src.path), *parent.sources],
        owners=owners, safeBins=bins, exec=exec_, seccomp=seccomp, filesystem=fs,
        escalation=esc, examples=examples, credentials=creds, credentialOrigins=origins,
        network=network)


def _as_child(r: ResolvedProfile) -> Profile:
    """A resolved co-parent, seen as a child whose given fields are its non-default ones."""
    data = r.model_dump(exclude={"chain", "sources", "content_hash", "credentialOrigins"},
                        exclude_defaults=True)
    return Profile.model_validate({"name": r.name, **data})


def _root(p: Profile) -> ResolvedProfile:
    return ResolvedProfile(name=p.name, description=p.description, chain=[p.name],
                           owners=list(p.owners), safeBins=dict(p.safeBins),
                           exec=p.exec or ExecPolicy(), seccomp=p.seccomp or SeccompPolicy(),
                           filesystem=p.filesystem or FilesystemPolicy(),
                           escalation=p.escalation or EscalationPolicy(), examples=p.examples,
                           credentials={k: c for k, c in (p.credentials or {}).items()
                                        if c is not None},
                           network=p.network or NetworkPolicy())
