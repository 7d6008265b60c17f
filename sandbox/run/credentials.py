"""Credentials handed to a run: the profile's `credentials:` section (docs/credentials.md).
Why this module is long: one mechanism in sections (trust, per-run files, the mint cache, minting,
the layer, the paths Landlock hides) that all handle the same secrets: kept together so that every
place a credential value is read, written, cached or deleted is reviewed in one file.

A run gets the credentials of its EFFECTIVE profile: the strict profile's (the low tier) without
a grant, the relaxed profile's (the escalated tier) under a profile grant. Each comes from a
source the operator owns, never from the caller:
  file        an absolute path; as root it must be root's, not readable or writable by others
  daemonEnv   a variable of the supervisor's own environment (the daemon's; root's in process)
  mint        a command run here, as the daemon, outside the sandbox, for a grant: {ttl} is the
              grant's remaining window (at most), the output is cached per grant and credential
A profile carrying credentials must come from the trusted profile directories (or be a file
root named itself), and, as root, be a file no one else can change: its mint command runs as
root.

Where values live:
  per-run files  <run root>/r-<supervisor pid>-<random>/NAME: the directory 0700 and the files
                 0600, the run's user's, in /run/glassbreak-credentials (root's, 0711; tmpfs
                 on systemd hosts); an emptied directory serves the user's next run (an
                 rmdir costs ~1.3 ms on ext4 with discard, an unlink ~16 us);
                 removed when the run ends, and when the grant's window closes (the escalated
                 tier's files); directories of supervisors that died are swept
  mint cache     <state dir>/credential-cache/: root's 0700, one 0600 file per (grant,
                 credential), removed when its grant's window has ended (or the grant was seen
                 revoked); the state dir is never readable in a run
  records        never: the run's SecretMask (sandbox.run.secretmask) masks the values in every
                 event and escalation the run records

A credential that cannot be issued (a missing file, an unset variable, a mint that fails, exits
non-zero, times out or prints nothing) fails the run closed: exit 125, a clear message, a
`credential_failed` audit record; never the strict tier instead.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import stat
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox.errors import RunnerError
from sandbox.events import CredentialFailed, CredentialIssued
from sandbox.run.layers.base import EnforcementLayer

if TYPE_CHECKING:
    from sandbox.kernel.child import ChildSpec
    from sandbox.policy.profile import Credential, ResolvedProfile
    from sandbox.run.layers.base import RunContext
    from sandbox.run.secretmask import SecretMask

RUN_ROOT = "/run/glassbreak-credentials"
CACHE_DIR = "credential-cache"
MAX_OUTPUT = 1 << 20  # a mint's stdout: a token or a kubeconfig, never megabytes
STDERR_TAIL = 600
DOCS = "docs/credentials.md"


class CredentialError(RunnerError):
    """A credential could not be issued: the run fails closed (125)."""

    kind = "credential"


@dataclass
class MintFailure(Exception):
    why: str
    exit_code: int | None = None
    stderr: bytes = b""


# ----------------------------------------------------------------------------- trust


_dirs: dict[tuple[str, ...], tuple[float, list[str]]] = {}


def trusted_dirs() -> list[str]:
    """The trusted profile directories, resolved (looked up again after a second)."""
    from sandbox.paths import profile_search_path

    key = tuple(str(d) for d in profile_search_path())
    hit = _dirs.get(key)
    if hit is None or time.monotonic() - hit[0] > 1.0:
        hit = _dirs[key] = (time.monotonic(), [os.path.realpath(d) for d in key])
    return hit[1]


def check_origins(profile: ResolvedProfile, *, root_chain: Iterable[str] = ()) -> None:
    """check_origin for every credential of the profile, each defining file once."""
    seen: set[str] = set()
    dirs = trusted_dirs()
    for name in profile.credentials:
        origin = profile.credentialOrigins.get(name, "")
        if origin not in seen:
            check_origin(profile, name, root_chain=root_chain, dirs=dirs)
            seen.add(origin)


def check_origin(profile: ResolvedProfile, name: str, *, root_chain: Iterable[str] = (),
                 dirs: list[str] | None = None) -> None:
    """Only the operator's profiles carry credential sources: the file that defined `name`
    must lie in a trusted profile directory (or be in the chain of a profile file root named
    itself), and, as root, be root's and writable by no one else."""
    origin = profile.credentialOrigins.get(name)
    if not origin:
        raise CredentialError(f"credential {name} of profile {profile.name}: the file that "
                              "defines it is not known", hint="load the profile from a file")
    real = os.path.realpath(origin)
    dirs = trusted_dirs() if dirs is None else dirs
    inside = any(real.startswith(d.rstrip("/") + "/") for d in dirs)
    if not inside and real not in {os.path.realpath(p) for p in root_chain}:
        raise CredentialError(
            f"credential {name} of profile {profile.name} is defined in {origin}, outside the "
            f"trusted profile directories ({', '.join(dirs)}): only the operator's profiles "
            "may carry credential sources (a mint command runs as root)",
            hint="move that profile into /etc/glassbreak/profiles (root's), or drop its "
            f"credentials; see {DOCS}")
    if os.geteuid() == 0:
        from sandbox.config import untrusted_reason

        why = untrusted_reason(Path(origin))
        if why:
            raise CredentialError(
                f"credential {name} of profile {profile.name} refused: {why}; a profile that "
                "someone other than root can change may not carry credential sources",
                hint=f"chown root:root {origin} && chmod 644 {origin} (and the directories "
                f"above it root's, not writable by others); see {DOCS}")


def _read_operator_file(path: str, what: str, *, secret: bool) -> str:
    if os.geteuid() == 0:
        from sandbox.config import untrusted_reason

        why = untrusted_reason(Path(path), secret=secret)
        if why:
            raise CredentialError(
                f"{what} {path} refused: {why}",
                hint=f"chown root:root {path} && chmod {'600' if secret else '644'} {path}; "
                f"see {DOCS}")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise CredentialError(f"{what} {path} cannot be read: {e.strerror or e}",
                              hint=f"check the path and its permissions; see {DOCS}") from None
    except UnicodeDecodeError:
        raise CredentialError(f"{what} {path} is not UTF-8 text",
                              hint="credentials are text (a token, a kubeconfig)") from None


# ----------------------------------------------------------------------------- per-run files

_swept: set[str] = set()


def run_root_path() -> str:
    """Where runs' credential directories go: /run/glassbreak-credentials for root (tmpfs on
    systemd hosts: never written to a disk), the runtime dir for anyone else."""
    euid = os.geteuid()
    if euid == 0:
        return RUN_ROOT
    return os.path.join(os.environ.get("XDG_RUNTIME_DIR") or "/tmp",  # noqa: S108 - ours,
                        f"glassbreak-credentials-{euid}")  # checked in run_root


def run_root() -> str:
    """The parent of every run's credential directory: this process's, not writable (or
    listable) by anyone else, on tmpfs when root (/run)."""
    euid = os.geteuid()
    base = run_root_path()
    try:
        os.mkdir(base, 0o711)
    except FileExistsError:
        pass
    st = os.lstat(base)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != euid or st.st_mode & 0o066:
        raise CredentialError(
            f"{base} is not a directory of uid {euid} that only it can write and list; "
            "refusing to put credentials there",
            hint=f"remove it (glassbreak makes it again, 0711); see {DOCS}")
    if base not in _swept:
        _swept.add(base)
        _sweep_dead(base)
    return base


def _sweep_dead(base: str) -> None:
    """Remove the directories of supervisors that died without removing them."""
    try:
        names = os.listdir(base)
    except OSError:
        return
    for n in names:
        m = re.match(r"^r-(\d+)-[0-9a-f]+$", n)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            shutil.rmtree(os.path.join(base, n), ignore_errors=True)


_pool: dict[tuple[int | None, int | None], list[str]] = {}
_pool_lock = threading.Lock()


@atexit.register
def _drop_pool() -> None:
    """A process removes the empty directories it kept (a daemon killed hard leaves them to
    the next supervisor's sweep: _sweep_dead)."""
    with _pool_lock:
        for paths in _pool.values():
            for p in paths:
                shutil.rmtree(p, ignore_errors=True)
        _pool.clear()


def make_run_dir(uid: int | None, gid: int | None) -> str:
    """A private directory for one run: 0700, the run's user's; an empty one an earlier run of
    that user gave back, else a new one."""
    want_uid = os.geteuid() if uid is None else uid
    with _pool_lock:
        pool = _pool.get((uid, gid), [])
        while pool:
            path = pool.pop()
            try:
                st = os.lstat(path)
                empty = not os.listdir(path)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode) and st.st_uid == want_uid and empty and \
                    stat.S_IMODE(st.st_mode) == 0o700:
                return path
            shutil.rmtree(path, ignore_errors=True)
    path = os.path.join(run_root(), f"r-{os.getpid()}-{secrets.token_hex(12)}")
    os.mkdir(path, 0o700)
    if uid is not None or gid is not None:
        os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)
    return path


def release_run_dir(path: str, files: Iterable[str], uid: int | None, gid: int | None) -> None:
    """After the run: its files are removed; the directory, when that leaves it empty, goes back
    to the pool for the user's next run, else it is removed with whatever the run left."""
    for f in files:
        try:
            os.unlink(f)
        except OSError:
            pass
    try:
        empty = not os.listdir(path)
    except OSError:
        empty = False
    if empty:
        with _pool_lock:
            pool = _pool.setdefault((uid, gid), [])
            if len(pool) < 64:
                pool.append(path)
                return
    shutil.rmtree(path, ignore_errors=True)


def write_private(path: str, content: str, uid: int | None, gid: int | None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        if uid is not None or gid is not None:
            os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
        data = content.encode()
        if not data.endswith(b"\n"):
            data += b"\n"
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- mint cache


def _h(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()[:24]


def cache_dir() -> Path:
    from sandbox.paths import state_dir

    d = state_dir() / CACHE_DIR
    try:
        d.mkdir(mode=0o700)
    except FileExistsError:
        pass
    os.chmod(d, 0o700)
    return d


def _spec_key(name: str, cred: Credential) -> str:
    return _h(name + "\0" + cred.model_dump_json())


def sweep_cache(d: Path, now: float | None = None) -> None:
    """Entries whose grant's window has ended are removed."""
    now = now or time.time()
    for p in d.glob("*.json"):
        try:
            exp = float(p.name.rsplit(".", 2)[-2])
        except (ValueError, IndexError):
            exp = 0.0
        if exp <= now:
            for q in (p, d / (p.name.split(".", 1)[0] + ".lock")):
                try:
                    q.unlink()
                except OSError:
                    pass
    for p in d.glob(".*.tmp"):  # a writer that died between write and rename
        try:
            if p.stat().st_mtime < now - 60:
                p.unlink()
        except OSError:
            pass


def purge_grant(grant_id: str) -> None:
    """Forget every mint of a grant (it was revoked)."""
    try:
        d = cache_dir()
    except OSError:
        return
    for p in d.glob(f"{_h(grant_id)}-*"):
        try:
            p.unlink()
        except OSError:
            pass


def cached_mint(grant: Any, name: str, cred: Credential, mint: Any) -> tuple[str, bool]:
    """(value, reused): the mint of (grant, credential), made once. A lock per entry: two runs
    starting together under one grant mint once."""
    d = cache_dir()
    sweep_cache(d)
    stem = f"{_h(grant.id)}-{_spec_key(name, cred)}"
    expires = int(float(grant.expires_at)) + 1
    entry = d / f"{stem}.{expires}.json"
    lock = os.open(d / f"{stem}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                   0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(entry, encoding="utf-8") as f:
                data = json.load(f)
            if data.get("grant_id") == grant.id and data.get("name") == name and \
                    isinstance(data.get("value"), str):
                return data["value"], True
        except (OSError, ValueError):
            pass
        value = mint()
        tmp = d / f".{stem}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"grant_id": grant.id, "name": name, "minted_at": time.time(),
                       "expires_at": float(grant.expires_at), "value": value}, f)
        os.replace(tmp, entry)
        return value, False
    finally:
        os.close(lock)


# ----------------------------------------------------------------------------- mint


def mint_ttl(grant: Any, now: float | None = None) -> int:
    """The most a minted credential may live: the grant's remaining window, whole seconds
    (rounded down)."""
    return int(float(grant.expires_at) - (now or time.time()))


def mint_command(cred: Credential, *, ttl_s: int, agent: str | None, grant_id: str
                 ) -> list[str]:
    from sandbox.policy.profile import mint_argv

    assert cred.mint is not None
    values = {"ttl": f"{ttl_s}s", "ttl_s": str(ttl_s), "grant_id": grant_id}
    if agent is not None:
        values["agent"] = agent

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in values:
            raise MintFailure(f"the mint command uses {{{key}}}, but this run has no {key}")
        return values[key]

    return [re.sub(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", sub, a) for a in mint_argv(cred.mint)]


def run_mint(argv: Sequence[str], *, timeout: float, env: dict[str, str]) -> str:
    """Run a mint command (outside the sandbox, as this process's user, in /, stdin empty, in a
    process group of its own that is killed at the timeout); its stdout, stripped."""
    import subprocess

    exe = argv[0]
    if "/" not in exe:
        found = shutil.which(exe, path=env.get("PATH") or os.defpath)
        if found is None:
            raise MintFailure(f"{exe}: command not found (PATH of the daemon: "
                              f"{env.get('PATH') or os.defpath})")
        exe = found
    try:
        proc = subprocess.Popen([exe, *argv[1:]], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                cwd="/", start_new_session=True, close_fds=True)
    except OSError as e:
        raise MintFailure(f"{exe} cannot be started: {e.strerror or e}") from None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # its own group (new session): ours only
        except ProcessLookupError:
            pass
        try:
            out, err = proc.communicate(timeout=2)
        except subprocess.TimeoutExpired:  # something left the group and holds the pipes
            err = b""
            for p in (proc.stdout, proc.stderr):
                if p is not None:
                    p.close()
            proc.wait(timeout=5)
        raise MintFailure(f"timed out after {timeout:g}s (killed)", None, err) from None
    if proc.returncode != 0:
        code = proc.returncode
        raise MintFailure(f"exited {code}" if code > 0 else f"died of signal {-code}",
                          code, err)
    if len(out) > MAX_OUTPUT:
        raise MintFailure(f"printed more than {MAX_OUTPUT >> 20} MiB", 0, err)
    text = out.decode("utf-8", "replace").strip()
    if not text:
        raise MintFailure("printed nothing on stdout", 0, err)
    return text


def stderr_tail(raw: bytes, mask: SecretMask | None = None) -> str | None:
    """The end of a mint's stderr, fit for records: secret-looking values redacted."""
    if not raw:
        return None
    from escalation.redact import redact_value

    text = raw[-STDERR_TAIL:].decode("utf-8", "replace")
    lines = [redact_value(line) for line in text.splitlines() if line.strip()]
    out = "\n".join(lines[-8:])
    return mask.text(out) if mask else out


def render(cred: Credential, raw: str) -> str:
    """The credential's content: the source's value, or the template around it."""
    if cred.template is not None:
        return cred.template.replace("{token}", raw)
    if cred.templateFile is not None:
        tpl = _read_operator_file(cred.templateFile, "credential template", secret=False)
        if "{token}" not in tpl:
            raise CredentialError(f"credential template {cred.templateFile} has no {{token}}",
                                  hint="put {token} where the source's value goes")
        return tpl.replace("{token}", raw)
    return raw


# ----------------------------------------------------------------------------- the layer


def tiers(strict: ResolvedProfile, effective: ResolvedProfile) -> list[ResolvedProfile]:
    """The profiles whose credentials concern a run: its strict and effective profiles and the
    strict profile's relaxed profile (the escalated tier a strict run must never see)."""
    out = {strict.name: strict, effective.name: effective}
    rel = strict.escalation.relaxedProfile
    if rel and rel not in out:
        from sandbox.errors import GlassbreakError
        from sandbox.policy.loader import load_profile

        with contextlib.suppress(GlassbreakError):  # a broken relaxed profile issues nothing
            out[rel] = load_profile(rel)
    return [p for p in out.values() if p.credentials]


def source_env_names(profiles: Iterable[ResolvedProfile]) -> dict[str, str]:
    """daemonEnv variable -> the credential it is the source of. These are the daemon's (in
    process: root's) and never pass into a run's environment, whatever the tier."""
    return {c.daemonEnv: name for p in profiles for name, c in p.credentials.items()
            if c.daemonEnv}



@dataclass
class Issued:
    name: str
    cred: Credential
    path: str | None  # deliver: file


class CredentialsLayer(EnforcementLayer):
    """Hands the effective profile's credentials to the run (environment, private files), and
    takes the escalated tier's files away when the grant's window closes."""

    name = "credentials"

    def __init__(self, *, grant: Any | None, agent: str | None, uid: int | None,
                 gid: int | None, mask: SecretMask, root_chain: Iterable[str] = (),
                 tiers: Sequence[ResolvedProfile] = ()) -> None:
        self.grant = grant
        self.tiers = list(tiers)
        self.agent = agent
        self.uid, self.gid = uid, gid
        self.mask = mask
        self.root_chain = list(root_chain)
        self.dir: str | None = None
        self.issued: list[Issued] = []

    def prepare(self, run: RunContext, spec: ChildSpec) -> None:
        sources = source_env_names([*self.tiers, run.effective])
        for var, name in sources.items():  # in process the run inherits root's environment
            self.mask.hidden.add(var)
            self.mask.add(name, os.environ.get(var, ""))
        env = {k: v for k, v in spec.env.items() if k not in sources}
        if len(env) != len(spec.env):
            spec.env = env
        prof = run.effective
        creds = prof.credentials
        if not creds:
            return
        check_origins(prof, root_chain=self.root_chain)
        values: list[tuple[str, Credential, str]] = []
        events: list[CredentialIssued] = []
        for name, cred in creds.items():
            t0 = time.monotonic()
            raw, cached = self._source(run, prof, name, cred)
            self.mask.add(name, raw)
            value = render(cred, raw)
            self.mask.add(name, value, env=cred.env)
            values.append((name, cred, value))
            minted = cred.source == "mint"
            events.append(CredentialIssued(
                name=name, source=cred.source, deliver=cred.deliver, env=cred.env,
                profile=prof.name, grant_id=getattr(self.grant, "id", None), cached=cached,
                expires_at=float(getattr(self.grant, "expires_at", 0)) if minted else None,
                mint_ms=round((time.monotonic() - t0) * 1000, 2) if minted and not cached
                else None))
        add: dict[str, str] = {}
        for name, cred, value in values:
            if cred.deliver == "env":
                add[cred.env] = value
                self.issued.append(Issued(name, cred, None))
                continue
            if self.dir is None:
                self.dir = make_run_dir(self.uid, self.gid)
                run.credentials_dir = self.dir
            path = os.path.join(self.dir, cred.fileName or name)
            write_private(path, value, self.uid, self.gid)
            add[cred.env] = path
            self.issued.append(Issued(name, cred, path))
        spec.env = {**spec.env, **add}  # a new dict: the caller's env (and records) unchanged
        for ev in events:
            run.record(ev, show=False)

    def _source(self, run: RunContext, prof: ResolvedProfile, name: str, cred: Credential
                ) -> tuple[str, bool]:
        gid = getattr(self.grant, "id", None)

        def fail(why: str, code: int | None = None, err: bytes = b"", hint: str | None = None
                 ) -> CredentialError:
            run.record(CredentialFailed(name=name, source=cred.source, profile=prof.name,
                                        grant_id=gid, exit_code=code, why=why,
                                        stderr_tail=stderr_tail(err, self.mask)), sync=True)
            return CredentialError(f"credential {name} of profile {prof.name} could not be "
                                   f"issued: {why}; nothing ran (no other credential is used "
                                   "instead)", hint=hint or f"see {DOCS}")

        try:
            if cred.file is not None:
                return _read_operator_file(cred.file, "credential file", secret=True), False
            if cred.daemonEnv is not None:
                v = os.environ.get(cred.daemonEnv)
                if not v:
                    raise CredentialError(
                        f"{cred.daemonEnv} is not set in the daemon's environment",
                        hint="set it where the daemon starts (its unit's Environment=); a "
                        "caller's environment is never used")
                return v, False
        except CredentialError as e:
            raise fail(e.message, hint=e.hint) from None
        if self.grant is None:
            raise fail("it is minted for a grant's window, and this run has no grant",
                       hint=f"run under the strict profile; the relaxed profile {prof.name} is "
                       "reached through an approved escalation")
        ttl = mint_ttl(self.grant)
        if ttl < 1:
            raise fail(f"grant {gid}'s window has ended")
        try:
            argv = mint_command(cred, ttl_s=ttl, agent=self.agent, grant_id=str(gid))
        except MintFailure as e:
            raise fail(e.why) from None
        env = dict(os.environ, GLASSBREAK_GRANT_ID=str(gid), GLASSBREAK_TTL_S=str(ttl),
                   GLASSBREAK_CREDENTIAL=name, GLASSBREAK_AGENT=self.agent or "")

        def mint() -> str:
            return run_mint(argv, timeout=cred.timeout_seconds, env=env)

        try:
            return cached_mint(self.grant, name, cred, mint)
        except MintFailure as e:
            raise fail(f"the mint command `{' '.join(argv[:3])}...` {e.why}", e.exit_code,
                       e.stderr, hint="fix the mint command or what it talks to; run it by "
                       f"hand as root to see why ({DOCS})") from None
        except OSError as e:
            raise fail(f"the mint cache cannot be used: {e.strerror or e}") from None

    def narrow(self, profile: ResolvedProfile) -> None:
        """The window closed (expired or revoked): the files of credentials the strict profile
        does not give are removed, and the grant's mints are forgotten."""
        for it in self.issued:
            if it.path is not None and profile.credentials.get(it.name) != it.cred:
                try:
                    os.unlink(it.path)
                except OSError:
                    pass
        if self.grant is not None:
            purge_grant(self.grant.id)

    def close(self) -> None:
        if self.dir is not None:
            release_run_dir(self.dir, [it.path for it in self.issued if it.path], self.uid,
                            self.gid)
            self.dir = None


# ----------------------------------------------------------------------------- for Landlock


def credential_paths(profiles: Sequence[ResolvedProfile] = (), *, config: Any | None = None
                     ) -> list[tuple[str, str]]:
    """(path, why) of everything no run may read: the config's credentialsDir, every file
    source and template of the given profiles AND of the relaxed profiles they name (a strict
    run must not read the escalated tier's source), the other runs' credential directories
    (the run root; a run's own directory is re-opened for it: RunContext.credentials_dir).
    The mint cache lives in the state dir, hidden already."""
    out: list[tuple[str, str]] = []
    try:
        if config is None:
            from sandbox.config import load_config

            config = load_config()
        out.append((config.credentialsDir, "glassbreak's credential sources are never "
                    "readable in a run"))
    except Exception:  # noqa: BLE001 - the default still applies
        out.append(("/etc/glassbreak/credentials", "glassbreak's credential sources are never "
                    "readable in a run"))
    seen: set[str] = set()
    todo = list(profiles)
    while todo:
        p = todo.pop()
        if p.name in seen:
            continue
        seen.add(p.name)
        for name, c in p.credentials.items():
            for f in (c.file, c.templateFile):
                if f:
                    out.append((f, f"credential {name} of profile {p.name}: its source is "
                                "never readable in a run"))
        rel = p.escalation.relaxedProfile
        if rel and rel not in seen:
            from sandbox.errors import GlassbreakError
            from sandbox.policy.loader import load_profile

            with contextlib.suppress(GlassbreakError):  # a broken relaxed profile issues nothing
                todo.append(load_profile(rel))
    out.append((run_root_path(), "other runs' credentials are never readable in a run"))
    return list(dict.fromkeys(out))
