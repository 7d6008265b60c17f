"""Profile files as data plus lines: parse YAML/JSON once, keep the line of every key and list
item, so that every later error (validation, merge, examples) can name file:line. Pure parsing;
no search path, no `extends` (sandbox.policy.loader), no merging (sandbox.policy.merge)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.errors import ProfileError
from sandbox.policy.profile import Profile

EXTENSIONS = (".yaml", ".yml", ".json")
Loc = tuple[str | int, ...]


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
