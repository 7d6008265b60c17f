"""The profile's `network:` section (pure): entry format, strict validation with file:line,
merging under `extends` (a child only narrows) and `relax: true`, what base says."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.errors import ProfileError
from sandbox.policy.loader import load_profile
from sandbox.policy.network import (
    NetworkEntryError,
    check_unix,
    covered,
    entry_covers,
    format_entry,
    parse_allow,
)


def test_entry_format() -> None:
    assert parse_allow("pypi.org:443").ports == (443, 443)
    e = parse_allow("*.pythonhosted.org:443")
    assert e.host == "*.pythonhosted.org" and e.is_name
    e = parse_allow("10.20.0.0/16:5432")
    assert e.is_ip and e.ports == (5432, 5432) and e.proto == "tcp"
    assert parse_allow("localhost:8000-8100").ports == (8000, 8100)
    assert parse_allow("[fd00::/8]:443").host == "fd00::/8"
    assert parse_allow("[::1]:53").host == "::1"
    assert parse_allow("udp:10.0.0.1:514").proto == "udp"
    assert parse_allow("any:10.0.0.1:514").proto == "any"
    assert parse_allow("example.org:*").ports == (1, 65535)
    assert parse_allow("Example.ORG.:80").host == "example.org"
    for e in ("pypi.org:443", "udp:10.0.0.1:514", "[fd00::/8]:443", "x.org:*", "a.b:1-9"):
        assert format_entry(*(lambda p: (p.host, p.ports, p.proto))(parse_allow(e))) == e


@pytest.mark.parametrize("bad", [
    "pypi.org", "fd00::1:443", "x.org:0", "x.org:70000", "x.org:9-1", "x.org:http",
    "*:443", "*.*.org:443", "a*.org:443", "-a.org:443", "a_b c.org:443", "10.0.0.1/8:443",
    "[pypi.org]:443", ":443", "tcp:", "a..b:443"])
def test_bad_entries_are_refused(bad: str) -> None:
    with pytest.raises(NetworkEntryError):
        parse_allow(bad)


def test_unix_entries() -> None:
    assert check_unix("/run/user/$UID/bus") == "/run/user/$UID/bus"
    assert check_unix("@/tmp/.X11-unix/X0") == "@/tmp/.X11-unix/X0"
    for bad in ("run/docker.sock", "/run//docker.sock", "/run/../docker.sock", "",
                "/" + "x" * 120, "/a\0b"):
        with pytest.raises(NetworkEntryError):
            check_unix(bad)


def test_coverage() -> None:
    p = parse_allow
    assert entry_covers(p("*.pythonhosted.org:443"), p("files.pythonhosted.org:443"))
    assert entry_covers(p("*.pythonhosted.org:443"), p("*.a.pythonhosted.org:443"))
    assert not entry_covers(p("*.pythonhosted.org:443"), p("pythonhosted.org:443"))
    assert not entry_covers(p("pypi.org:443"), p("pypi.org:80"))
    assert entry_covers(p("pypi.org:1-1000"), p("pypi.org:443"))
    assert entry_covers(p("10.0.0.0/8:5432"), p("10.20.0.0/16:5432"))
    assert not entry_covers(p("10.20.0.0/16:5432"), p("10.0.0.0/8:5432"))
    assert not entry_covers(p("tcp:10.0.0.1:53"), p("udp:10.0.0.1:53"))
    assert entry_covers(p("any:10.0.0.1:53"), p("udp:10.0.0.1:53"))
    assert not entry_covers(p("10.0.0.0/8:443"), p("pypi.org:443"))
    assert covered(p("a.b.org:443"), [p("x.org:443"), p("*.b.org:443")])


def _write(d: Path, name: str, body: str) -> Path:
    f = d / f"{name}.yaml"
    f.write_text(body)
    return f


def test_base_allows_nothing() -> None:
    base = load_profile("base")
    assert base.network.default == "block"
    assert base.network.allow == [] and base.network.unix == []
    ids = {r.id for r in base.seccomp.rules}
    assert {"net-family-high", "net-netlink-route-only"} <= ids
    for name in ("readonly", "k8s-readonly", "k8s-ops-escalated", "mcporter"):
        p = load_profile(name)
        assert p.network.allow == [] and p.network.unix == [] and p.network.default == "block"


def test_a_bad_entry_names_file_and_line(tmp_path: Path) -> None:
    f = _write(tmp_path, "bad", "name: bad\nextends: base\nnetwork:\n  allow:\n"
               "    - \"pypi.org:443\"\n    - \"pypi.org\"\n")
    with pytest.raises(ProfileError) as ei:
        load_profile(str(f))
    msg = ei.value.message
    assert f"{f}:6" in msg and "network.allow" in msg and "host:port" in msg
    f = _write(tmp_path, "bad2", "name: bad2\nnetwork:\n  defualt: allow\n")
    with pytest.raises(ProfileError) as ei:
        load_profile(str(f))
    assert "unknown field 'defualt'" in ei.value.message and "default" in (ei.value.hint or "")


def test_extends_only_narrows(tmp_path: Path) -> None:
    _write(tmp_path, "dev", "name: dev\nextends: base\nnetwork:\n  allow: [\"pypi.org:443\", "
           "\"*.pythonhosted.org:443\", \"10.0.0.0/8:5432\"]\n  unix: [/run/a.sock]\n")
    _write(tmp_path, "narrow", "name: narrow\nextends: ./dev.yaml\nnetwork:\n  default: deny\n"
           "  allow: [\"files.pythonhosted.org:443\", \"10.1.0.0/16:5432\"]\n")
    p = load_profile(str(tmp_path / "narrow.yaml"))
    assert p.network.default == "deny"
    assert p.network.allow == ["files.pythonhosted.org:443", "10.1.0.0/16:5432"]
    assert p.network.unix == ["/run/a.sock"]  # inherited
    _write(tmp_path, "wider", "name: wider\nextends: ./dev.yaml\nnetwork:\n"
           "  allow: [\"evil.example:443\"]\n")
    with pytest.raises(ProfileError) as ei:
        load_profile(str(tmp_path / "wider.yaml"))
    assert "network.allow[0]" in ei.value.message and "relax: true" in (ei.value.hint or "")
    _write(tmp_path, "unixwide", "name: unixwide\nextends: ./dev.yaml\nnetwork:\n"
           "  unix: [/var/run/docker.sock]\n")
    with pytest.raises(ProfileError):
        load_profile(str(tmp_path / "unixwide.yaml"))
    _write(tmp_path, "loosen", "name: loosen\nextends: ./dev.yaml\nnetwork:\n  default: allow\n")
    assert load_profile(str(tmp_path / "loosen.yaml")).network.default == "block"


def test_relax_replaces(tmp_path: Path) -> None:
    _write(tmp_path, "strict", "name: strict\nextends: base\nnetwork:\n"
           "  allow: [\"pypi.org:443\"]\n")
    _write(tmp_path, "relaxed", "name: relaxed\nextends: ./strict.yaml\nrelax: true\n"
           "network:\n  allow: [\"pypi.org:443\", \"github.com:443\"]\n")
    p = load_profile(str(tmp_path / "relaxed.yaml"))
    assert p.network.allow == ["pypi.org:443", "github.com:443"]
    assert p.network.default == "block"


def test_network_changes_the_content_hash(tmp_path: Path) -> None:
    _write(tmp_path, "a", "name: h\nextends: base\nnetwork:\n  allow: [\"pypi.org:443\"]\n")
    _write(tmp_path, "b", "name: h\nextends: base\nnetwork:\n  allow: [\"pypi.org:80\"]\n")
    assert load_profile(str(tmp_path / "a.yaml")).content_hash != \
        load_profile(str(tmp_path / "b.yaml")).content_hash
