"""The Landlock layer: the run's filesystem domain, built by sandbox.run.filesystem, and the
report of its denials (sandbox.run.layers.base has the interface)."""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sandbox.events import Degraded, ExecBlocked
from sandbox.policy.decision import Decision, Verdict
from sandbox.run.layers.base import EnforcementLayer, LayerResult, RunContext

if TYPE_CHECKING:
    from sandbox.kernel.child import Child, ChildSpec
    from sandbox.policy.profile import ResolvedProfile


@dataclass
class FsBlock:
    """A Landlock denial the run's profile lets an operator approve (same shape as the exec
    gate's BlockInfo, plus the path and what an approval grants on it)."""

    decision: Decision
    layer: str
    cwd: str
    ancestry: list[dict[str, Any]]
    recent_execs: list[dict[str, Any]]
    fs_path: str
    fs_access: str
    sha256: str | None = None


class LandlockLayer(EnforcementLayer):
    """The run's Landlock domain (sandbox.run.filesystem): a cached static layer (read, execute,
    scopes) and a per-run layer (writes), glassbreak's trust anchors always protected. Denials
    come back as kernel audit records (sandbox.kernel.landlock_audit): each distinct one is
    reported (audit log, trace, one stderr line) and, under a `block` rule, raises an
    escalation whose approval grants that path (`fs_grants` of later runs)."""

    name = "landlock"
    cache: Any = None  # the process's LayerCache (static layers of every profile in use)
    _cache_lock = threading.Lock()
    MAX_DISTINCT = 64  # denials itemized per run; more are counted
    LINGER = 0.5  # s: denials that reach the reader after the run ended are still recorded

    def __init__(self, abi: int, *, binary: str | None = None,
                 fs_grants: Sequence[tuple[str, str]] = (), network: bool = False) -> None:
        self.abi = abi
        self.binary = binary
        self.fs_grants = list(fs_grants)
        self.network = network  # the network layer's hooks guard unix sockets in this run
        self.scopes_abstract = False  # set by prepare: the domain scopes abstract unix sockets
        self.tmp: str | None = None
        self._release: Callable[[], None] | None = None
        self._rulesets: list[Any] = []
        self._router: Any = None
        self._pid: int | None = None
        self._child: Any = None
        self._queue: deque[Any] = deque()
        self._pipe: tuple[int, int] | None = None
        self._rules: Any = None
        self._protected: list[tuple[str, str, bool]] = []
        self._seen: dict[str, int] = {}
        self._overflow = 0
        self._first: tuple[str, str, str, str | None] | None = None
        self._cg: Any = None
        self._run: RunContext
        self._late = False
        self._report_lock = threading.Lock()
        self._spawned = 0.0
        self._owner: tuple[int | None, int | None] = (None, None)
        self.attrs: Any = None

    def prepare(self, run: RunContext, spec: ChildSpec) -> None:
        from sandbox.kernel import landlock as L
        from sandbox.run import filesystem as F

        with self._cache_lock:
            if LandlockLayer.cache is None:
                LandlockLayer.cache = F.LayerCache()
        self._run = run
        monitor = run.mode == "monitor"
        profiles = F.run_profiles(run.strict, run.effective)
        anchors = F.trust_anchors(profiles)
        own_creds = run.credentials_dir
        if own_creds:  # the run reads its own credential directory (a third layer below)
            anchors = F.without(anchors, os.path.dirname(own_creds))
        self._cg = run.cgroup
        self._owner = (spec.uid, spec.gid)
        self.tmp = F.make_tmp(spec.uid, spec.gid)
        tmp_parent = os.path.dirname(self.tmp)
        variables = {"CWD": os.path.realpath(run.cwd), "HOME": F.home_of(spec.uid),
                     "TMPDIR": self.tmp}
        self._rules = F.rules_for(run.effective, variables)
        self._protected = [*anchors.protected(), *F.BUILT_IN]
        reads = [p for p, a in self.fs_grants if a == "read"]
        writes = [p for p, a in self.fs_grants if a != "read"]
        scope_abstract = not self._abstract_listed(run, profiles)
        self.scopes_abstract = scope_abstract and self.abi >= 6
        static = F.static_inputs(F.rules_for(run.effective, {**variables, "TMPDIR": tmp_parent}),
                                 anchors, tmp_parent=tmp_parent, monitor=monitor,
                                 exec_all=F.exec_all(profiles), read_grants=reads,
                                 scope_abstract=scope_abstract)
        binary = self.binary if any(p.grantedCommands for p in profiles) else None
        rs, self._release = self.cache.acquire(
            (static.key(), tuple(p.content_hash for p in profiles), binary, self.abi),
            lambda: F.build_static(static, profiles, binary, self.abi, envelope=not monitor))
        per_run = F.run_inputs(self._rules, anchors, tmp=self.tmp, monitor=monitor,
                               write_grants=writes)
        # cached too: an agent that keeps its cwd gets the same (pooled) temp dir back, and one
        # ruleset serves any number of runs (each restrict_self makes a new domain)
        run_rs, release2 = self.cache.acquire(
            (per_run.key(), self.abi), lambda: F.build(per_run, self.abi, resolve=False))
        first = self._release

        def release_both() -> None:
            first()
            release2()
        self._release = release_both
        if (spec.uid if spec.uid is not None else os.geteuid()) == 0:
            from sandbox.run.attrgate import AttrGate

            # root's chmod/chown/utime: performed where this per-run layer grants writing
            self.attrs = run.attr_gate = AttrGate(writable=run_rs.inodes,
                                                  protected=self._protected,
                                                  report=self._attr_refused)
        log = L.LOG_NEW_EXEC_ON if self.abi >= 7 else 0
        # the run's layer is the youngest: nested domains a program makes below it stay silent
        spec.landlock = [(rs.fd, log), (run_rs.fd, log | (L.LOG_SUBDOMAINS_OFF if log else 0))]
        if own_creds:
            # every file readable but the other runs' credentials: only runs that hold
            # credentials pay for this layer (~40 rules, planned per run)
            _, creds_rs = F.build(F.credentials_inputs(own_creds, anchors), self.abi)
            self._rulesets.append(creds_rs)
            spec.landlock.insert(1, (creds_rs.fd, log))
        if "$TMPDIR" in (sp for sp, _ in self._rules.write):
            spec.env = {**spec.env, "TMPDIR": self.tmp,
                        "XDG_CACHE_HOME": os.path.join(self.tmp, "cache")}
        self._router, why = F.denial_router(self.abi)
        if self._router is None:
            run.record(Degraded(what="filesystem denials", why=why), show=False)
        else:
            self._pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._spawned = time.monotonic()

    def _abstract_listed(self, run: RunContext, profiles: Sequence[ResolvedProfile]) -> bool:
        """Does the run need an abstract unix socket outside it: a profile of the run (the
        relaxed one included) lists one in network.unix (`@name`), or an active destination
        grant names one? Then the network layer's hooks guard abstract sockets (refused unless
        listed or granted) and the static layer does not scope them (Landlock's scope would
        refuse every one). Without the network layer the scope always stays."""
        if not self.network:
            return False
        if any(u.startswith("@") for p in profiles for u in p.network.unix):
            return True
        if run.destination_grants is None or run.strict.network.default == "deny":
            return False
        try:  # the supervisor keeps the answer for the network layer's first poll
            grants = run.destination_grants()
        except Exception:  # noqa: BLE001 - no grant honoured: the scope stays (fail closed)
            return False
        return any(str(getattr(g, "destination", "") or "").startswith("unix:@") for g in grants)

    def started(self, run: RunContext, child: Child) -> None:
        self._child = child
        for rs in self._rulesets:  # the child holds its domain now
            rs.close()
        if self._router is not None and self._pipe is not None:
            self._pid = child.pid
            w = self._pipe[1]

            def sink(d: Any) -> None:
                if self._late:  # the run is over: recorded and escalated from here
                    self._report(d, late=True)
                    return
                self._queue.append(d)
                try:
                    os.write(w, b"d")
                except OSError:
                    pass
            self._router.register(child.pid, sink, since=self._spawned)

    def fds(self) -> list[int]:
        return [self._pipe[0]] if self._pipe is not None else []

    def handle(self, fd: int) -> None:
        try:
            while os.read(fd, 4096):
                pass
        except BlockingIOError:
            pass
        self._drain()

    def _drain(self) -> None:
        while self._queue:
            self._report(self._queue.popleft())

    def _report(self, d: Any, late: bool = False) -> None:
        with self._report_lock:
            self._report1(d, late)

    def _report1(self, d: Any, late: bool) -> None:
        from sandbox.policy.filesystem import Judgement

        fs = [r for r in d.rights if r.startswith("fs.")]
        if fs:
            j = self._rules.judge(d.path, fs, protected=[
                (p, why) for p, why, hidden in self._protected
                if hidden or not set(fs) <= {"fs.read_file", "fs.read_dir", "fs.execute"}])
            layer = "filesystem"
        else:
            # an abstract unix name starts with NUL: shown as "@name" (docs/network.md)
            obj = {k: ("@" + v[1:] if k == "path" and str(v).startswith("\0") else v)
                   for k, v in d.object.items()}
            what = obj.get("ocomm") or obj.get("path") or "?"
            hint = (" (list it in network.unix to let the run reach it)"
                    if d.blockers == "scope.abstract_unix_socket" else "")
            j = Judgement(f"landlock.{d.blockers}:{what}", "deny",
                          f"{d.blockers} outside the run refused (Landlock scope): "
                          f"{' '.join(f'{k}={v}' for k, v in obj.items())}{hint}", "")
            layer = "landlock"
        self._block(j, layer, j.rule_id, d.path, d.rights, d.pid or d.domain_pid, late)

    def _block(self, j: Any, layer: str, key: str, path: str | None, access: list[str],
               pid: int | None, late: bool, *, argv: list[str] | None = None,
               binary: str | None = None, syscall: str | None = None) -> None:
        """One distinct refusal (by `key`): recorded, escalated under a `block` verdict."""
        run = self._run
        if key in self._seen:
            self._seen[key] += 1
            return
        if len(self._seen) >= self.MAX_DISTINCT:
            self._overflow += 1
            return
        self._seen[key] = 1
        argv = argv or list(run.argv)
        binary = binary or self.binary
        esc = None
        if j.verdict == "block" and run.mode == "enforce" and j.access in ("read", "write"):
            recent = run.recent_execs() if run.recent_execs is not None else []
            esc = run.on_block(FsBlock(
                Decision(Verdict.BLOCK, j.rule_id, j.reason, tuple(argv), binary),
                layer, run.cwd, [{"pid": pid if syscall else self._pid, "argv": argv}], recent,
                path or "", j.access))
        run.record(ExecBlocked(layer=layer, verdict=j.verdict,  # type: ignore[arg-type]
                               rule_id=j.rule_id, reason=j.reason, argv=argv,
                               binary=binary, pid=pid, profile=run.strict.name,
                               escalation_id=esc, path=path or None, access=access,
                               syscall=syscall), sync=True, show=not late)
        if self._first is None:
            self._first = (j.rule_id, j.reason, layer, esc)

    def _attr_refused(self, r: Any) -> None:
        """A root run's chmod/chown/utime the supervisor refused (sandbox.run.attrgate)."""
        from sandbox.policy.filesystem import Judgement

        what = f"{r.syscall} of {r.path}"
        if r.kind == "outside":
            j = self._rules.judge(r.path, [r.syscall], protected=[
                (p, why) for p, why, _ in self._protected])
        elif r.kind == "anchor":
            j = Judgement(f"filesystem.self-protection:{r.path}", "deny",
                          f"{what} refused: {r.detail}" + (
                              f" ({r.anchor[0]})" if r.anchor[0] != r.path else ""), "write")
        elif r.kind == "setid":
            j = Judgement(f"filesystem.setid:{r.path}", "deny",
                          f"{what} refused: {r.detail}; a run never adds a setuid or setgid "
                          "bit", "write")
        elif r.kind == "type":
            j = Judgement(f"filesystem.attr-type:{r.path}", "deny",
                          f"{what} refused: {r.detail}", "write")
        else:
            j = Judgement(f"filesystem.attr-unresolvable:{r.syscall}", "deny",
                          f"{what} refused: {r.detail}", "write")
        from sandbox.run.attrgate import FAMILY_ACCESS

        with self._report_lock:
            self._block(j, "filesystem", f"{j.rule_id}#{r.family}", r.path,
                        [FAMILY_ACCESS[r.family]], r.pid, False, argv=list(r.argv) or None,
                        binary=r.exe, syscall=r.syscall)

    def finish(self, run: RunContext, result: LayerResult) -> None:
        self._run = run
        if self._router is not None and self._pid is not None:
            # a failed command (a denial usually is why) waits until every denial the kernel
            # queued before now is routed; a successful one only for what reached the reader
            # (asking the kernel costs ~30-200 us; a later denial goes to the audit log only).
            # A failed command may wait up to 0.5 s (returns as soon as the kernel's queue is
            # empty and the reader idle): under load, a denial routed after this point misses
            # the run's result, and `--wait` then has no escalation to wait for
            failed = result.status is not None and result.status != 0
            self._router.settle(limit=0.5 if failed else 0.05, ask_kernel=failed)
        self._drain()
        result.blocked += len(self._seen)
        if self._first is not None and result.first_block is None:
            result.first_block = self._first
        if self._overflow:
            run.record(Degraded(what="filesystem denials", why=f"{self._overflow} more "
                                f"distinct denials were not itemized (limit "
                                f"{self.MAX_DISTINCT} a run)"), show=False)
        if self.attrs is not None and (self.attrs.stats.performed or self.attrs.stats.refused
                                       or self.attrs.stats.failed):
            result.extra["attrs"] = self.attrs.stats.as_dict()
        err = self._child.exec_error() if self._child is not None else None
        if err is not None and "exec envelope" in err.message:
            result.reason, result.layer = err.message, "filesystem"

    def close(self) -> None:
        if self._router is not None and self._pid is not None:
            # and what reached the reader while the other layers finished
            self._router.settle(limit=0.01, ask_kernel=False)
            self._drain()
            # records still in flight: the audit log and escalations only, through a slim view
            # of the run (not the exec gate, the child or the cgroup, which the run frees)
            run = self._run
            recent = run.recent_execs() if run.recent_execs is not None else []
            self._run = RunContext(
                run_id=run.run_id, mode=run.mode, strict=run.strict, effective=run.effective,
                cgroup=None, env={}, cwd=run.cwd, record=run.record,  # type: ignore[arg-type]
                on_block=run.on_block, uid=run.uid, argv=run.argv,
                recent_execs=lambda: recent)
            self._child = None
            self._late = True
            self._router.unregister(self._pid, linger=self.LINGER)
            while self._queue:
                self._report(self._queue.popleft(), late=True)
        if self._pipe is not None:
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None
        for rs in self._rulesets:
            rs.close()
        if self._release is not None:
            self._release()
            self._release = None
        if self.tmp is not None:
            from sandbox.run.filesystem import release_tmp

            empty = True
            if self._cg is not None:  # nothing of the run may still write there
                self._cg.kill()
                empty = bool(self._cg.wait_empty(timeout=2.0))
            release_tmp(self.tmp, *self._owner, keep=empty)
            self.tmp = None
