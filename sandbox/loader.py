"""Load profiles: files (YAML/JSON), the search path, `extends`, file:line errors, examples.

Finding a profile
  `load_profile(x)`: x is a path when it contains '/' or names an existing file or ends in
  .yaml/.yml/.json; otherwise a name looked up as NAME.yaml, NAME.yml, NAME.json in
  `sandbox.paths.profile_search_path()` (first wins). In `extends`, names go through the search
  path (then, as a fallback, the extending file's own folder); relative paths are relative to
  the extending file. Chains are allowed; a cycle is an error naming it (a -> b -> a).

Fragments
  A file whose top level is exactly `{"safeBins": {...}}`, or a bare mapping binary -> rule (no
  known profile key, every value a mapping), loads unchanged as a profile named after the file
  stem (the seed design's safeBins object). A profile without `name` is named after its stem.

`extends` merge semantics (child onto its merged parent; several parents are first merged left
to right the same way, as if each later one extended the earlier):
  Without `relax: true` a child can only ADD restrictions:
  - safeBins, per binary: forbiddenFlags, deniedFlags, restrictedCommands, deniedCommands,
    valueFlags: union. Allowlists (allowedValueFlags, allowedFlags, allowedCommands): intersect
    when both define them (an entry `--f=v` or `cmd sub` narrows `--f` or `cmd`); a child may
    introduce an allowlist where its parent had none. min/maxPositional: the stricter.
    onViolation: the stricter (deny > block). A new binary is fine unless the parent has an
    exec.allow list that does not cover it (error).
  - exec.allow: the first profile of a chain that lists programs defines the allowlist; below
    it a child's list replaces it, and every child entry must be covered by a parent entry
    (equal, a literal matched by a parent glob, or narrower than a parent `prefix*`), else an
    error. exec.deny / exec.block: union. exec.default: the stricter (deny > block > allow).
    allowFileless: may only be turned off. trustedDirs: intersection.
  - seccomp: rules concatenated (parent first); per syscall the stricter unconditional action
    wins (kill_process > kill_thread > trap > errno > notify > log > allow; equal rank: the
    child's), conditional rules on a syscall with an equal-or-stricter unconditional rule are
    dropped. defaultAction: the stricter.
  - owners: union. escalation: inherited field-wise (the child's given fields win), except
    maxTtl, which can only shrink (ttl is clamped to it).
  - examples (profile, exec and per-safeBin): union; all are checked against the final profile.
  With `relax: true` the child's values replace the parent's where given (per safeBins binary
  and per field; exec and escalation per field; seccomp rules and owners as a whole), and the
  parents' examples are not re-checked (they describe the stricter profile); the relaxing
  profile brings its own examples, which are checked. `relaxedProfile` naming the profile
  itself is dropped.

Errors are `ProfileError`s naming file:line, the field path and the problem, with a hint.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import json
import os
import shlex
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from sandbox.errors import ProfileError
from sandbox.paths import profile_search_path
from sandbox.profile import (
    EscalationPolicy,
    Examples,
    ExecPolicy,
    Profile,
    ResolvedProfile,
    SafeBin,
    SeccompPolicy,
    SeccompRule,
    parse_duration,
)

EXTENSIONS = (".yaml", ".yml", ".json")
Loc = tuple[str | int, ...]
SyscallCheck = Callable[[str], bool]


# ----------------------------------------------------------------------------- files and lines


@dataclass
class Source:
    """One parsed file: its data and a map from field path to line (1-based)."""

    path: Path
    data: dict[str, Any]
    lines: dict[Loc, int] = field(default_factory=dict)
    prefix: Loc = ()  # bare safeBins fragments: loc ('safeBins', ...) maps to (...)

    def line(self, loc: Iterable[str | int]) -> int | None:
        loc = tuple(loc)
        if self.prefix and loc[: len(self.prefix)] == self.prefix:
            loc = loc[len(self.prefix):]
        while True:
            if loc in self.lines:
                return self.lines[loc]
            if not loc:
                return None
            loc = loc[:-1]

    def where(self, loc: Iterable[str | int] = ()) -> str:
        n = self.line(loc)
        return f"{self.path}:{n}" if n else str(self.path)


def _index_nodes(node: Any, loc: Loc, out: dict[Loc, int], path: Path) -> None:
    import yaml

    out.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            key = k.value
            if key in seen:
                raise ProfileError(
                    f"{path}:{k.start_mark.line + 1}: duplicate key {key!r} in "
                    f"{_dotted(loc) or 'the top level'}",
                    hint="a key may appear once; the second would silently replace the first",
                )
            seen.add(key)
            out[(*loc, key)] = k.start_mark.line + 1
            _index_nodes(v, (*loc, key), out, path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_nodes(item, (*loc, i), out, path)


def _dotted(loc: Iterable[str | int]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def read_source(path: str | Path) -> Source:
    """Parse a YAML/JSON file, keeping the line of every key and list item."""
    import yaml

    p = Path(path)
    if p.suffix not in EXTENSIONS:
        raise ProfileError(f"{p}: not a profile file (expected .yaml, .yml or .json)",
                           hint="rename it or pass a profile name")
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ProfileError(f"cannot read profile {p}: {e.strerror or e}",
                           hint="check the path and its permissions") from e
    lines: dict[Loc, int] = {}
    try:
        data = json.loads(text) if p.suffix == ".json" else None
        ldr = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)  # libyaml: ~10x faster
        try:
            node = ldr.get_single_node()  # one parse: the nodes (with marks) and the data
            if p.suffix != ".json" and node is not None:
                data = ldr.construct_document(node)
        finally:
            ldr.dispose()
    except json.JSONDecodeError as e:
        raise ProfileError(f"{p}:{e.lineno}: invalid JSON: {e.msg}",
                           hint="fix the syntax (a linter such as `python -m json.tool` helps)"
                           ) from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"{p}:{mark.line + 1}" if mark else str(p)
        problem = getattr(e, "problem", None) or str(e)
        raise ProfileError(f"{at}: invalid YAML: {problem}",
                           hint="fix the syntax; quote values that start with - or contain :"
                           ) from e
    if node is not None:
        _index_nodes(node, (), lines, p)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProfileError(f"{p}:1: a profile must be a mapping, got {type(data).__name__}",
                           hint="start the file with `name: ...` or `safeBins: ...`")
    src = Source(p, data, lines)
    known = set(Profile.model_fields)
    if data and not (set(data) & known) and all(isinstance(v, dict) for v in data.values()):
        src.data = {"safeBins": data}  # bare seed fragment: binary -> rule
        src.prefix = ("safeBins",)
    src.data.setdefault("name", p.stem)
    return src


def _model_at(model: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The pydantic model that holds the last element of loc (for 'did you mean')."""
    cur: Any = model
    for part in loc[:-1]:
        if isinstance(cur, type) and issubclass(cur, BaseModel):
            if not isinstance(part, str) or part not in cur.model_fields:
                return None
            cur = cur.model_fields[part].annotation
        elif typing.get_origin(cur) in (dict, list):
            cur = typing.get_args(cur)[-1]
        else:
            return None
        while typing.get_origin(cur) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(cur) if a is not type(None)]
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            cur = models[0] if models else args[-1]
    return cur if isinstance(cur, type) and issubclass(cur, BaseModel) else None


def _value_at(data: Any, loc: Loc) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _validation_error(src: Source, err: ValidationError) -> ProfileError:
    msgs: list[str] = []
    hints: list[str] = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and "[" in p))
        shown = loc[len(src.prefix):] if src.prefix and loc[:1] == src.prefix else loc
        if e["type"] == "extra_forbidden":
            key = str(loc[-1])
            model = _model_at(Profile, loc)
            fields = list(model.model_fields) if model else []
            close = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
            problem = f"unknown field {key!r}"
            if close:
                hints.append(f"did you mean {close[0]}?")
            elif fields:
                hints.append(f"{_dotted(loc[:-1]) or 'the top level'} accepts: "
                             + ", ".join(fields))
        else:
            problem = e["msg"]
            value = _value_at(src.data, loc)
            if isinstance(value, list):  # a list-level validator: point at the item it names
                hit = [i for i, v in enumerate(value) if repr(v) in problem]
                if hit:
                    loc, shown = (*loc, hit[0]), (*shown, hit[0])
        msgs.append(f"{src.where(loc)}: {_dotted(shown) or '(top level)'}: {problem}")
    hint = "; ".join(dict.fromkeys(hints)) or "fix the field; `glassbreak profile schema` " \
        "prints the full format"
    return ProfileError("invalid profile\n  " + "\n  ".join(msgs), hint=hint)


def load_raw(path: str | Path) -> Profile:
    """One file as written (no `extends` resolution), validated."""
    return _load_source(read_source(path))[0]


def _load_source(src: Source) -> tuple[Profile, Source]:
    try:
        return Profile.model_validate(src.data), src
    except ValidationError as e:
        raise _validation_error(src, e) from None


# ----------------------------------------------------------------------------- finding files


def _looks_like_path(value: str) -> bool:
    return "/" in value or value.endswith(EXTENSIONS)


def find_profile(name: str) -> Path | None:
    for d in profile_search_path():
        for ext in EXTENSIONS:
            p = d / f"{name}{ext}"
            if p.is_file():
                return p
    return None


def _resolve_ref(ref: str, base_dir: Path | None) -> Path:
    if _looks_like_path(ref) or (base_dir is None and Path(ref).is_file()):
        p = Path(ref).expanduser()
        if not p.is_absolute() and base_dir is not None:
            p = base_dir / p
        if not p.is_file():
            raise ProfileError(f"profile file not found: {p}",
                               hint="check the path (relative paths in `extends` are relative "
                               "to the extending file)")
        return p.resolve()
    found = find_profile(ref)
    if found is None and base_dir is not None:
        found = next((base_dir / f"{ref}{e}" for e in EXTENSIONS
                      if (base_dir / f"{ref}{e}").is_file()), None)
    if found is None:
        dirs = ", ".join(str(d) for d in profile_search_path())
        near = difflib.get_close_matches(ref, [n for n, _, _ in list_profiles()], n=1)
        raise ProfileError(
            f"no profile named {ref!r} (searched {dirs})",
            hint=(f"did you mean {near[0]}? " if near else "")
            + "`glassbreak profile list` shows the profiles; pass a path to use a file")
    return found.resolve()


def list_profiles() -> list[tuple[str, Path, str]]:
    """(name, path, description) of every profile on the search path; first one wins."""
    seen: dict[str, tuple[str, Path, str]] = {}
    for d in profile_search_path():
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            if p.suffix not in EXTENSIONS or p.stem in seen or not p.is_file():
                continue
            try:
                desc = load_raw(p).description or ""
            except ProfileError as e:
                desc = f"(invalid: {e.message.splitlines()[-1].strip()})"
            seen[p.stem] = (p.stem, p, desc)
    return sorted(seen.values())


def profile_schema() -> dict[str, Any]:
    return Profile.model_json_schema()


# ----------------------------------------------------------------------------- merging

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
    esc = parent.escalation if child.escalation is None else _merge_escalation(
        parent.escalation, child.escalation, relax, src)
    if relax and esc.relaxedProfile == child.name:
        esc = esc.model_copy(update={"relaxedProfile": None})
    if relax and _given(child, "owners"):
        owners = list(child.owners)
    else:
        owners = _union(parent.owners, child.owners)
    ex = parent.examples
    examples = child.examples if relax else ex.model_copy(update={
        k: _union(getattr(ex, k), getattr(child.examples, k)) for k in ("allow", "block", "deny")})
    return ResolvedProfile(
        name=child.name, description=child.description or parent.description,
        chain=[child.name, *parent.chain], sources=[str(src.path), *parent.sources],
        owners=owners, safeBins=bins, exec=exec_, seccomp=seccomp, escalation=esc,
        examples=examples)


def _as_child(r: ResolvedProfile) -> Profile:
    """A resolved co-parent, seen as a child whose given fields are its non-default ones."""
    data = r.model_dump(exclude={"chain", "sources", "content_hash"}, exclude_defaults=True)
    return Profile.model_validate({"name": r.name, **data})


def _root(p: Profile) -> ResolvedProfile:
    return ResolvedProfile(name=p.name, description=p.description, chain=[p.name],
                           owners=list(p.owners), safeBins=dict(p.safeBins),
                           exec=p.exec or ExecPolicy(), seccomp=p.seccomp or SeccompPolicy(),
                           escalation=p.escalation or EscalationPolicy(), examples=p.examples)


# ----------------------------------------------------------------------------- resolution


@dataclass
class _Ctx:
    validate_syscalls: SyscallCheck | None
    stack: list[tuple[str, Path]] = field(default_factory=list)
    origins: dict[tuple[str, str, str], str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def _note_examples(prof: Profile, src: Source, ctx: _Ctx, reset: bool) -> None:
    if reset:
        ctx.origins.clear()
    scopes: list[tuple[str, tuple[str | int, ...], Any]] = [("", ("examples",), prof.examples)]
    if prof.exec:
        scopes.append(("exec", ("exec", "examples"), prof.exec.examples))
    scopes += [(b, ("safeBins", b, "examples"), r.examples) for b, r in prof.safeBins.items()]
    for scope, loc, ex in scopes:
        for kind in ("allow", "block", "deny"):
            for i, line in enumerate(getattr(ex, kind)):
                ctx.origins.setdefault((scope, kind, line), src.where((*loc, kind, i)))


def _check_syscalls(prof: Profile, src: Source, check: SyscallCheck) -> None:
    for i, rule in enumerate(prof.seccomp.rules if prof.seccomp else []):
        for j, name in enumerate(rule.syscalls):
            if not check(name):
                raise ProfileError(
                    f"{src.where(('seccomp', 'rules', i, 'syscalls', j))}: "
                    f"seccomp.rules[{i}].syscalls[{j}]: unknown syscall {name!r} on this "
                    "architecture", hint="use the kernel's name (see `man 2 syscalls`)")


def _resolve(path: Path, ctx: _Ctx) -> ResolvedProfile:
    if any(p == path for _, p in ctx.stack):
        names = [n for n, _ in ctx.stack[next(i for i, (_, p) in enumerate(ctx.stack)
                                              if p == path):]]
        cycle = " -> ".join([*names, names[0]])
        raise ProfileError(f"`extends` cycle: {cycle} ({path})",
                           hint="remove one of the `extends` so that the chain ends")
    prof, src = _load_source(read_source(path))
    ctx.files.append(path)
    if ctx.validate_syscalls is not None:
        _check_syscalls(prof, src, ctx.validate_syscalls)
    ctx.stack.append((prof.name, path))
    try:
        parents = [_resolve(_resolve_ref(ref, path.parent), ctx) for ref in prof.parents]
    finally:
        ctx.stack.pop()
    _note_examples(prof, src, ctx, reset=prof.relax)
    if not parents:
        res = _root(prof)
        return res.model_copy(update={"sources": [str(path)]})
    acc = parents[0]
    for extra in parents[1:]:
        merged = merge(acc, _as_child(extra), Source(Path(extra.sources[0]), {}))
        acc = merged.model_copy(update={"chain": [*acc.chain, *extra.chain],
                                        "sources": [*acc.sources, *extra.sources]})
    return merge(acc, prof, src)


def content_hash(p: ResolvedProfile) -> str:
    data = p.model_dump(mode="json", exclude={"sources", "content_hash"})
    canon = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


CheckFn = Callable[..., Any]


def check_examples(p: ResolvedProfile, origins: dict[tuple[str, str, str], str] | None = None,
                   check: CheckFn | None = None) -> None:
    """Every example line must get its stated verdict from the policy (lenient matching)."""
    todo: list[tuple[str, str, str]] = []
    for scope, ex in [("", p.examples), ("exec", p.exec.examples),
                      *((b, r.examples) for b, r in p.safeBins.items())]:
        todo += [(scope, kind, line) for kind in ("allow", "block", "deny")
                 for line in getattr(ex, kind)]
    if check is None and todo:
        try:
            from sandbox.policy import check_argv
        except ImportError as e:
            raise ProfileError(f"cannot check the examples of {p.name}: the policy module is "
                               f"missing ({e})", hint="reinstall glassbreak: make setup") from e
        check = check_argv
    origins = origins or {}
    for scope, kind, line in todo:
        where = origins.get((scope, kind, line), p.sources[0] if p.sources else p.name)
        try:
            argv = shlex.split(line)
        except ValueError as e:
            raise ProfileError(f"{where}: example {line!r}: cannot split it like a shell: {e}",
                               hint="fix the quoting") from None
        if not argv:
            raise ProfileError(f"{where}: empty example line", hint="remove it")
        assert check is not None
        d = check(p, argv, lenient=True)
        got = getattr(d.verdict, "value", d.verdict)
        if got != kind:
            raise ProfileError(
                f"{where}: example `{line}` is listed under {kind} but the profile "
                f"{p.name} says {got} (rule {d.rule_id}: {d.reason})",
                hint=f"fix the rule so that it {kind}s this command, or move the example "
                f"(`glassbreak profile explain {p.name} -- {line}` shows why)")


def resolve(name_or_path: str, *, validate_syscalls: SyscallCheck | None = None,
            examples: bool = True, check: CheckFn | None = None) -> ResolvedProfile:
    ctx = _Ctx(validate_syscalls)
    path = _resolve_ref(name_or_path, None)
    res = _resolve(path, ctx)
    res = res.model_copy(update={"content_hash": content_hash(res)})
    if examples:
        check_examples(res, ctx.origins, check)
    return res


_CACHE: dict[tuple[str, str, tuple[str, ...]], tuple[ResolvedProfile, list[Any]]] = {}


def _stamp(paths: Iterable[str]) -> list[Any]:
    out: list[Any] = []
    for s in paths:
        try:
            st = os.stat(s)
            out.append((s, st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append((s, None))
    return out


def load_profile(name_or_path: str, *, validate_syscalls: SyscallCheck | None = None,
                 examples: bool = True) -> ResolvedProfile:
    """Load, resolve `extends`, validate and check the examples of a profile (cached by the
    files' mtime, size and inode, so a long-lived daemon sees edits)."""
    key = (name_or_path, os.getcwd(), tuple(str(p) for p in profile_search_path()))
    hit = _CACHE.get(key) if validate_syscalls is None and examples else None
    if hit and _stamp(hit[0].sources) == hit[1]:
        return hit[0]
    res = resolve(name_or_path, validate_syscalls=validate_syscalls, examples=examples)
    if validate_syscalls is None and examples:
        _CACHE[key] = (res, _stamp(res.sources))
    return res


def seccomp_syscall_check() -> SyscallCheck:
    """A `validate_syscalls` hook backed by libseccomp (names of the native architecture)."""
    import pyseccomp

    arch = pyseccomp.system_arch()

    def known(name: str) -> bool:
        return int(pyseccomp.resolve_syscall(arch, name)) >= 0

    return known
