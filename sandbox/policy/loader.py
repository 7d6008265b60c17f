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

`extends` merge semantics: see sandbox/policy/merge.py (a child only adds restrictions unless it
says `relax: true`; where rules conflict the stricter decision wins).


Errors are `ProfileError`s naming file:line, the field path and the problem, with a hint.
"""

from __future__ import annotations

import difflib
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
from sandbox.policy.merge import _as_child, _root, merge
from sandbox.policy.profile import (
    Profile,
    ResolvedProfile,
)
from sandbox.policy.source import EXTENSIONS, Loc, Source, _dotted, read_source

SyscallCheck = Callable[[str], bool]


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
        for name, c in (prof.credentials or {}).items():
            if c is None:
                raise ProfileError(f"{src.where(('credentials', name))}: credentials.{name}: "
                                   "null removes an inherited credential, but this profile "
                                   "extends none", hint="remove the line")
        res = _root(prof)
        return res.model_copy(update={"sources": [str(path)], "credentialOrigins": {
            k: str(path) for k in res.credentials}})
    acc = parents[0]
    for extra in parents[1:]:
        merged = merge(acc, _as_child(extra), Source(Path(extra.sources[0]), {}))
        origins = dict(merged.credentialOrigins)  # a co-parent's credential: where it was
        origins.update({k: v for k, v in extra.credentialOrigins.items()  # really defined
                        if k in extra.credentials and merged.credentials.get(k) ==
                        extra.credentials[k] and acc.credentials.get(k) != extra.credentials[k]})
        acc = merged.model_copy(update={"chain": [*acc.chain, *extra.chain],
                                        "sources": [*acc.sources, *extra.sources],
                                        "credentialOrigins": origins})
    return merge(acc, prof, src)


def content_hash(p: ResolvedProfile) -> str:
    data = p.model_dump(mode="json", exclude={"sources", "content_hash", "credentialOrigins"})
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
            from sandbox.policy.check import check_argv
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
