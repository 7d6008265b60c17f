"""A profile's `network:` section, as pure data: destination entries, parsing, coverage.

    network:
      default: block            # block (escalatable) | deny (never) | allow
      allow:
        - "pypi.org:443"                 # a name: resolved through glassbreak's resolver
        - "*.pythonhosted.org:443"       # any name below pythonhosted.org (not itself)
        - "10.20.0.0/16:5432"            # an address or CIDR
        - "localhost:8000-8100"          # 127.0.0.1 and ::1 (and the name localhost)
        - "[fd00::/8]:443"               # IPv6 in brackets
        - "udp:10.0.0.1:514"             # tcp (default) | udp | any
        - "api.example.com:*"            # every port
      unix: ["/run/user/$UID/bus", "@/tmp/.X11-unix/X0"]   # pathname or @abstract; $UID

No I/O here: the kernel side is sandbox.kernel.sockhooks, the run side sandbox.run.network.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

PROTOS = ("tcp", "udp", "any")
LABEL_RE = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


class NetworkEntryError(ValueError):
    pass


@dataclass(frozen=True)
class AllowEntry:
    """One `network.allow` entry."""

    host: str                 # a name, "*.name", "localhost", an address or a CIDR
    ports: tuple[int, int]
    proto: str = "tcp"        # tcp | udp | any

    @property
    def is_ip(self) -> bool:
        return is_ip(self.host)

    @property
    def is_name(self) -> bool:
        return not self.is_ip

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.host, strict=False)

    def text(self) -> str:
        return format_entry(self.host, self.ports, self.proto)


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_network(host, strict=False)
        return True
    except ValueError:
        return False


def format_entry(host: str, ports: tuple[int, int], proto: str = "tcp") -> str:
    h = f"[{host}]" if ":" in host else host
    p = "*" if ports == (1, 65535) else (str(ports[0]) if ports[0] == ports[1]
                                         else f"{ports[0]}-{ports[1]}")
    return f"{'' if proto == 'tcp' else proto + ':'}{h}:{p}"


def _check_name(host: str, entry: str) -> None:
    name = host[2:] if host.startswith("*.") else host
    if host == "*":
        raise NetworkEntryError(f"{entry!r}: '*' alone is every name; use `default: allow`")
    if len(name) > 253 or not name:
        raise NetworkEntryError(f"{entry!r}: not a host name")
    labels = name.split(".")
    if any(not LABEL_RE.match(lab) for lab in labels) or "*" in name:
        raise NetworkEntryError(
            f"{entry!r}: {host!r} is not a host name, a `*.` wildcard, an address or a CIDR")


@functools.lru_cache(maxsize=4096)
def parse_allow(entry: str) -> AllowEntry:
    """'host:port', '*.name:lo-hi', 'cidr:port', '[v6]:port', 'udp:host:port', 'host:*'."""
    if not isinstance(entry, str):
        raise NetworkEntryError(f"{entry!r}: an entry is a string like \"pypi.org:443\"")
    s = entry.strip()
    proto = "tcp"
    for p in PROTOS:
        if s.startswith(p + ":"):
            proto, s = p, s[len(p) + 1:]
            break
    if s.startswith("["):                        # [v6 or v6/len]:port
        host, _, rest = s[1:].partition("]")
        if not rest.startswith(":"):
            raise NetworkEntryError(f"{entry!r}: expected [address]:port")
        port = rest[1:]
        if not is_ip(host):
            raise NetworkEntryError(f"{entry!r}: {host!r} in brackets is not an IPv6 address")
    else:
        host, sep, port = s.rpartition(":")
        if not sep:
            raise NetworkEntryError(f"{entry!r}: expected host:port (a port, a range lo-hi, "
                                    "or * for every port)")
        if ":" in host:
            raise NetworkEntryError(f"{entry!r}: write IPv6 addresses in brackets: "
                                    "\"[fd00::1]:443\"")
    if port == "*":
        ports = (1, 65535)
    else:
        lo, _, hi = port.partition("-")
        try:
            ports = (int(lo), int(hi or lo))
        except ValueError:
            raise NetworkEntryError(f"{entry!r}: bad port {port!r}") from None
    if not (0 < ports[0] <= ports[1] <= 65535):
        raise NetworkEntryError(f"{entry!r}: ports must be 1-65535, low <= high")
    host = host.lower().rstrip(".")
    if not host:
        raise NetworkEntryError(f"{entry!r}: empty host")
    if is_ip(host):
        try:
            ipaddress.ip_network(host, strict=True)
        except ValueError:
            raise NetworkEntryError(f"{entry!r}: {host!r} has host bits set; write the "
                                    "network address") from None
    else:
        _check_name(host, entry)
    return AllowEntry(host, ports, proto)


def check_unix(path: str) -> str:
    """A `network.unix` entry: an absolute path ($UID is the run's uid) or @abstract-name."""
    if not isinstance(path, str) or not path:
        raise NetworkEntryError(f"{path!r}: a unix socket entry is a path or @name")
    if "\0" in path:
        raise NetworkEntryError(f"{path!r}: contains a NUL byte")
    if path.startswith("@"):
        if len(path.encode()) > 108:
            raise NetworkEntryError(f"{path!r}: abstract names are at most 107 bytes")
        return path
    if not path.startswith("/"):
        raise NetworkEntryError(f"{path!r}: unix socket paths must be absolute (the hook "
                                "compares the string the program passes; relative spellings "
                                "are refused)")
    if len(path.replace("$UID", "4294967295").encode()) > 108:
        raise NetworkEntryError(f"{path!r}: longer than sun_path (108 bytes)")
    if "//" in path or "/./" in path or "/../" in path or path.endswith(("/.", "/..")):
        raise NetworkEntryError(f"{path!r}: write the canonical path (no //, . or ..)")
    return path


def expand_unix(path: str, uid: int) -> str:
    return path.replace("$UID", str(uid))


def name_matches(pattern: str, name: str) -> bool:
    p, n = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if p.startswith("*."):
        return n.endswith(p[1:]) and len(n) > len(p) - 1
    return n == p


def _proto_covers(parent: str, child: str) -> bool:
    return parent == child or parent == "any"


def entry_covers(parent: AllowEntry, child: AllowEntry) -> bool:
    """Every destination `child` opens is also opened by `parent`."""
    if not _proto_covers(parent.proto, child.proto):
        return False
    if not (parent.ports[0] <= child.ports[0] and child.ports[1] <= parent.ports[1]):
        return False
    if parent.is_ip != child.is_ip:
        return False
    if parent.is_ip:
        pn, cn = parent.network, child.network
        return pn.version == cn.version and cn.subnet_of(pn)  # type: ignore[arg-type]
    if child.host == parent.host:
        return True
    if parent.host.startswith("*."):
        inner = child.host[2:] if child.host.startswith("*.") else child.host
        return name_matches(parent.host, inner)
    return False


def covered(child: AllowEntry, parents: list[AllowEntry]) -> bool:
    return any(entry_covers(p, child) for p in parents)


def unix_covered(path: str, parents: list[str]) -> bool:
    return path in parents
