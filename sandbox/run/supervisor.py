"""The supervisor: the one place where policy and mechanisms meet.
Why this module is long: it is the one place where policy and the mechanisms meet. Supervisor (~670
lines) decides a run, applies its grants, prepares credentials and layers, runs the event loop and
writes the result, in one fail-closed order that splitting would spread over several files; the
mechanisms are in sandbox.kernel and the layers in sandbox.run.layers.

One run, as data flows (DESIGN.md):
  1 load the profile                                   sandbox.policy.loader        (pure)
  2 an active grant for (agent, profile)? -> relaxed   escalation.service    (store)
  3 argv pre-check of the top-level command            sandbox.policy.check        (pure)
  4 spawn: own cgroup v2 leaf, tracer watching it, child: no_new_privs -> Landlock -> seccomp
    -> execve
  5 every exec in the tree checked again               sandbox.run.execgate (unotify + eBPF)
  6 events -> audit log, stderr (text or JSON lines)
  7 blocks -> escalation requests                      escalation.service
  8 grant expiry / revocation -> strict profile again, processes started under the grant ended
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from sandbox.errors import (
    EXIT_BLOCKED,
    EXIT_RUNNER_FAILED,
    EXIT_SIGNAL_BASE,
    GlassbreakError,
    KernelFeatureMissing,
    StoreError,
)
from sandbox.events import (
    Degraded,
    EventsLost,
    ExecBlocked,
    GrantEnded,
    GrantUsed,
    RunExited,
    RunStarted,
)
from sandbox.policy.decision import Decision, Layer, Verdict

if TYPE_CHECKING:
    from sandbox.policy.profile import ResolvedProfile

Mode = Literal["enforce", "monitor"]
DEGRADABLE = ("exec-gate", "ebpf", "landlock", "network")


@dataclass
class RunRequest:
    argv: list[str]
    profile: str = "readonly"
    agent: str | None = None
    reason: str | None = None
    mode: Mode = "enforce"
    wait: float | None = None  # seconds to wait for an escalation decision on a pre-check block
    env: dict[str, str] | None = None
    cwd: str | None = None
    degraded: tuple[str, ...] = ()  # layers explicitly switched off (written in the audit log)
    stdin: int = 0
    stdout: int = 1
    stderr: int = 2
    uid: int | None = None
    gid: int | None = None
    groups: list[int] | None = None
    user: str | None = None  # the caller's unix user (recorded)
    agent_source: str | None = None  # how the agent was derived (sandbox.run.caller)
    # called with (child pid, RunCgroup) once the child exists: lets a caller (the daemon)
    # deliver signals to the run
    on_spawn: Callable[[int, Any], None] | None = None


@dataclass
class RunResult:
    run_id: str
    exit_code: int
    decision: str = "allow"  # allow | block | deny | error
    rule_id: str | None = None
    reason: str | None = None
    layer: str | None = None
    escalation_id: str | None = None
    signal: int | None = None
    execs: int = 0
    blocked: int = 0
    hint: str | None = None


Emit = Callable[[Any], None]


class Record(Protocol):
    def __call__(self, ev: Any, *, show: bool = True, sync: bool = False) -> None: ...


def new_run_id() -> str:
    return "run_" + uuid.uuid4().hex[:12]


class Supervisor:
    """Runs commands under profiles. A daemon keeps one Supervisor (and so one eBPF tracer)."""

    def __init__(self, *, tracer: Any | None = None, audit: Any | None = None,
                 network: Any | None = None) -> None:
        # Without a relaxedProfile or autoApprove rule, only a command-scope grant could apply;
        # the store is consulted when it holds any grant at all (cheap for SQLite).
        self._maybe_grants = True
        self._tracer = tracer
        self._tracer_error: str | None = None
        self._prewarm: threading.Thread | None = None
        self._audit = audit
        self._esc_service: Any | None = None
        self._states: dict[str, str] = {}  # escalation id -> state seen when it was raised
        self._filters: dict[tuple[str, bool, bool, bool], Any] = {}  # see _filter
        # run id -> the SecretMask of a run that holds credentials: what it records is masked
        self._masks: dict[str, Any] = {}
        self._network = network  # sandbox.run.network.NetworkService, once per process
        self._network_error: str | None = None
        self._network_lock = threading.Lock()

    # -- lazily built collaborators -------------------------------------------------------
    @property
    def audit(self) -> Any:
        if self._audit is None:
            from sandbox.audit import AuditLog

            self._audit = AuditLog()
        return self._audit

    def escalations(self) -> Any:
        if self._esc_service is None:
            from escalation.service import EscalationService

            self._esc_service = EscalationService.from_env()
        return self._esc_service

    def prewarm(self) -> None:
        """Start compiling the eBPF program (~0.6 s in clang, outside the GIL) in a thread, so a
        cold run overlaps it with imports, profile loading and the pre-check."""
        if self._tracer is None and self._prewarm is None:
            self._prewarm = threading.Thread(target=self._build_tracer, name="gb-bpf",
                                             daemon=True)
            self._prewarm.start()

    def prewarm_running(self) -> bool:
        return self._prewarm is not None and self._prewarm.is_alive()

    def _build_tracer(self) -> None:
        try:
            from sandbox.kernel.ebpf import ExecTracer

            self._tracer = ExecTracer()
        except Exception as e:  # noqa: BLE001 - reported as a missing kernel feature
            self._tracer_error = f"{type(e).__name__}: {e}"
        if self._prewarm_network:
            self._build_network()  # after the tracer: bcc compiles must not overlap (cwd)

    _prewarm_network = False

    def prewarm_network(self) -> None:
        """Also compile the network hooks in the prewarm thread (after the tracer)."""
        self._prewarm_network = True

    def _build_network(self) -> None:
        with self._network_lock:
            if self._network is not None or self._network_error is not None:
                return
            try:
                from sandbox.run.network import NetworkService

                self._network = NetworkService()
            except GlassbreakError as e:
                self._network_error = e.message
            except Exception as e:  # noqa: BLE001 - reported as a missing kernel feature
                self._network_error = f"{type(e).__name__}: {e}"

    def network(self) -> Any:
        """The network service (hooks + resolver), built once; KernelFeatureMissing if not."""
        if self._prewarm is not None:
            self._prewarm.join()
        self._build_network()
        if self._network is None:
            raise KernelFeatureMissing(
                f"the network layer could not start ({self._network_error})",
                hint="run `glassbreak doctor` to see which kernel feature is missing; "
                "`--degraded network` (root) runs without it (recorded in the audit log)",
            )
        return self._network

    def tracer(self) -> Any:
        if self._prewarm is not None:
            self._prewarm.join()
        elif self._tracer is None and self._tracer_error is None:
            self._build_tracer()
        if self._tracer is None:
            raise KernelFeatureMissing(
                f"the eBPF exec tracer could not start ({self._tracer_error})",
                hint="run `glassbreak doctor` to see which kernel feature is missing; "
                "`--degraded ebpf` runs without it (recorded in the audit log)",
            )
        return self._tracer

    # -- the run ------------------------------------------------------------------------------
    def run(self, req: RunRequest, emit: Emit) -> RunResult:
        """Run one command. `emit` receives every user-facing event (the CLI renders them)."""
        run_id = new_run_id()
        started = time.monotonic()
        events: list[Any] = []

        masked = [0]  # the mask version the recorded events were masked with
        over = [False]  # after the run's result: the caller's stdio is no longer ours to write

        def record(ev: Any, *, show: bool = True, sync: bool = False) -> None:
            ev.run_id = ev.run_id or run_id
            mask = self._masks.get(run_id)
            if mask is not None:  # credential values never reach the audit log or stderr
                mask.event(ev)
            events.append(ev)
            if show and not over[0]:
                emit(ev)
            if sync or len(events) >= 256:
                if mask is not None and mask.version != masked[0]:
                    for e in events:  # recorded before the run's credentials were known
                        mask.event(e)
                    masked[0] = mask.version
                self._flush(events, sync=sync)

        try:
            result = self._run(req, run_id, record)
        except GlassbreakError as e:
            result = RunResult(run_id, e.exit_code, decision="error", reason=e.message,
                               hint=e.hint)
        result.run_id = run_id
        record(
            RunExited(
                run_id=run_id, decision=result.decision,  # type: ignore[arg-type]
                exit_code=result.exit_code, signal=result.signal, rule_id=result.rule_id,
                reason=result.reason, hint=result.hint, layer=result.layer,
                escalation_id=result.escalation_id,
                duration_ms=round((time.monotonic() - started) * 1000, 2),
                execs=result.execs, blocked=result.blocked,
            ),
            sync=True,
        )
        self._masks.pop(run_id, None)
        over[0] = True  # a layer's late report (a denial in flight) goes to the audit log only
        return result

    def _flush(self, events: list[Any], sync: bool) -> None:
        if events:
            self.audit.write_many(events, sync=sync)
            events.clear()

    def _run(self, req: RunRequest, run_id: str, record: Record) -> RunResult:
        from sandbox.policy.check import check_argv
        from sandbox.policy.loader import load_profile

        if not req.argv:
            from sandbox.errors import UsageError

            raise UsageError("no command given", hint="glassbreak run --profile P -- CMD ARGS...")
        for d in req.degraded:
            if d not in DEGRADABLE:
                from sandbox.errors import UsageError

                raise UsageError(f"unknown layer for --degraded: {d!r}",
                                 hint=f"choose from {', '.join(DEGRADABLE)}")
        env = dict(os.environ if req.env is None else req.env)
        cwd = req.cwd or os.getcwd()
        strict = load_profile(req.profile)
        effective, grant = self._apply_grants(strict, req, env, cwd, record)
        if "landlock" in req.degraded and req.uid not in (None, 0):
            from sandbox.errors import UsageError

            raise UsageError("--degraded landlock is for root only",
                             hint="run without it; a non-root run always gets its Landlock domain")

        # 3. the argv pre-check of the top-level command
        decision = check_argv(effective, req.argv, cwd=cwd, env_path=env.get("PATH"))
        if not decision.allowed:
            esc_id = self._block(strict, decision, Layer.PRECHECK, req, cwd, env, record,
                                 run_id=run_id, enforced=req.mode == "enforce")
            if req.mode == "enforce":
                auto = esc_id is not None and self._states.get(esc_id) == "approved"
                if (auto or req.wait is not None) and decision.verdict is Verdict.BLOCK \
                        and esc_id:
                    waited = self._wait_and_retry(req, strict, esc_id, env, cwd, record)
                    if waited is not None:
                        effective, grant = waited
                        decision = check_argv(effective, req.argv, cwd=cwd,
                                              env_path=env.get("PATH"))
                if not decision.allowed:
                    return RunResult(run_id, EXIT_BLOCKED, decision=decision.verdict.value,
                                     rule_id=decision.rule_id, reason=decision.reason,
                                     layer=Layer.PRECHECK.value, escalation_id=esc_id, blocked=1)
        result = self._spawn_and_supervise(req, run_id, strict, effective, grant, decision, env,
                                           cwd, record)
        if req.wait is not None and req.mode == "enforce" and result.layer == "filesystem" \
                and result.escalation_id and self._states.get(result.escalation_id) != "denied":
            # a filesystem denial under a block rule: with --wait, wait for the operator and, if
            # approved, run the command once more with the path granted
            waited = self._wait_and_retry(req, strict, result.escalation_id, env, cwd, record,
                                          need_grant=False)
            if waited is not None:
                effective, grant = waited
                result = self._spawn_and_supervise(req, run_id, strict, effective, grant,
                                                   decision, env, cwd, record)
        return result

    # -- grants ---------------------------------------------------------------------------------
    def _path_grants(self, strict: ResolvedProfile, req: RunRequest,
                     record: Record) -> list[Any]:
        """Active path grants for (agent, profile): approved filesystem escalations. Each adds
        its path to the run's Landlock domain (read, or write)."""
        if "landlock" in req.degraded or strict.filesystem.default == "deny":
            return []
        try:
            grants = list(self.escalations().path_grants(
                agent=req.agent, profile=strict.name,
                on_reject=lambda ev: record(ev, sync=True)))
        except StoreError as e:
            record(Degraded(what="grants", why=f"grant store unreachable, no path grants: "
                                                f"{e.message}"))
            return []
        for g in grants:
            record(GrantUsed(grant_id=g.id, escalation_id=g.escalation_id, approver=g.approver,
                             relaxed_profile=f"{strict.name} + {g.fs_access} {g.fs_path}",
                             expires_at=float(g.expires_at)), sync=True)
        return grants

    def _apply_grants(self, strict: ResolvedProfile, req: RunRequest, env: dict[str, str],
                      cwd: str, record: Record) -> tuple[ResolvedProfile, Any | None]:
        relaxed_name = strict.escalation.relaxedProfile
        if not relaxed_name and not strict.escalation.autoApprove and not self._maybe_grants:
            return strict, None
        binary = _resolved_binary(req.argv, env, cwd)
        try:
            grant = self.escalations().active_grant(
                agent=req.agent, profile=strict.name, argv=list(req.argv), cwd=cwd,
                binary=binary, relaxed_profile=relaxed_name,
                on_reject=lambda ev: record(ev, sync=True),
            )
        except StoreError as e:
            record(Degraded(what="grants", why=f"grant store unreachable, strict profile used: "
                                                f"{e.message}"))
            return strict, None
        except GlassbreakError as e:  # e.g. no grant key here: no grant is honoured
            record(Degraded(what="grants", why=f"grants cannot be checked, strict profile "
                                                f"used: {e.message}"), sync=True)
            return strict, None
        if grant is None:
            return strict, None
        if getattr(grant, "scope", "profile") == "command":
            from sandbox.policy.profile import GrantedCommand

            # the grant's own argv is the escalation record's, REDACTED (a secret in argv is
            # masked there); what it covers is its signed cmd_key, which active_grant matched
            # against exactly this run's argv, cwd and binary: so the run's argv is the one
            effective = strict.model_copy(update={"grantedCommands": [GrantedCommand(
                grant_id=grant.id, argv=list(req.argv),
                binary_sha256=grant.binary_sha256)]})
        else:
            from sandbox.policy.loader import load_profile

            target = getattr(grant, "relaxed_profile", None) or relaxed_name
            effective = load_profile(target) if target else strict
        record(GrantUsed(grant_id=grant.id, escalation_id=getattr(grant, "escalation_id", None),
                         approver=getattr(grant, "approver", "?"),
                         relaxed_profile=effective.name if grant.scope != "command"
                         else f"{strict.name} + command grant",
                         expires_at=float(getattr(grant, "expires_at", 0) or 0)), sync=True)
        return effective, grant

    def _wait_and_retry(self, req: RunRequest, strict: ResolvedProfile, esc_id: str,
                        env: dict[str, str], cwd: str, record: Record, need_grant: bool = True
                        ) -> tuple[ResolvedProfile, Any | None] | None:
        try:
            rec = self.escalations().wait_for_decision(esc_id, req.wait or 0)
        except StoreError as e:
            record(Degraded(what="wait", why=e.message))
            return None
        if getattr(rec, "state", None) != "approved":
            return None
        effective, grant = self._apply_grants(strict, req, env, cwd, record)
        return (effective, grant) if grant is not None or not need_grant else None

    # -- blocks -> escalations --------------------------------------------------------------------
    def _block(self, profile: ResolvedProfile, decision: Decision, layer: Layer,
               req: RunRequest, cwd: str, env: dict[str, str], record: Record, *, run_id: str,
               enforced: bool = True, pid: int | None = None, ancestry: list[Any] | None = None,
               recent: list[Any] | None = None, sha256: str | None = None) -> str | None:
        esc_id: str | None = None
        delivery_note: str | None = None
        if enforced and decision.verdict is Verdict.BLOCK:
            esc_id, delivery_note = self._raise(profile, decision, layer, req, cwd, env,
                                                run_id, ancestry, recent, sha256)
        record(
            ExecBlocked(
                layer=layer.value, verdict=decision.verdict.value,  # type: ignore[arg-type]
                rule_id=decision.rule_id, reason=decision.reason, argv=list(decision.argv),
                binary=decision.binary, sha256=sha256, pid=pid, profile=profile.name,
                escalation_id=esc_id, enforced=enforced,
            ),
            sync=True,
        )
        if delivery_note:
            record(Degraded(what="webhook", why=delivery_note))
        return esc_id

    def _raise(self, profile: ResolvedProfile, decision: Decision, layer: Layer,
               req: RunRequest, cwd: str, env: dict[str, str], run_id: str,
               ancestry: list[Any] | None, recent: list[Any] | None, sha256: str | None,
               fs: tuple[str, str] | None = None, destination: str | None = None
               ) -> tuple[str | None, str | None]:
        try:
            from escalation.service import BlockContext

            if sha256 is None and decision.binary:
                try:
                    from sandbox.policy.resolve import sha256_file

                    sha256 = sha256_file(decision.binary)
                except OSError:
                    sha256 = None
            esc = profile.escalation
            mask = self._masks.get(run_id)
            if mask is not None:  # what the run holds never reaches a record or a webhook
                from dataclasses import replace

                decision = replace(decision, argv=tuple(mask.scrub(list(decision.argv))),
                                   reason=mask.text(decision.reason))
                req = replace(req, argv=mask.scrub(list(req.argv)),
                              reason=mask.text(req.reason) if req.reason else req.reason)
                env = mask.env(env)
                ancestry, recent = mask.scrub(ancestry or []), mask.scrub(recent or [])
            elif profile.credentials or esc.relaxedProfile:  # blocked before the run started
                from sandbox.run.credentials import source_env_names, tiers

                hidden = source_env_names(tiers(profile, profile))
                env = {k: v for k, v in env.items() if k not in hidden}
            ctx = BlockContext(
                agent=req.agent, host=socket.gethostname(), profile=profile.name,
                profile_hash=profile.content_hash, owners=profile.approvers, layer=layer.value,
                rule_id=decision.rule_id, rule_reason=decision.reason,
                verdict=decision.verdict.value, argv=list(decision.argv or req.argv),
                binary=decision.binary, binary_sha256=sha256, cwd=cwd, env=env,
                ancestry=ancestry or [], recent_execs=recent or [], agent_reason=req.reason,
                run_id=run_id, relaxed_profile=esc.relaxedProfile, ttl_default=esc.ttl_seconds,
                max_ttl=esc.max_ttl_seconds, pending_ttl=esc.pending_ttl_seconds,
                webhooks=list(esc.webhooks), auto_approve=list(esc.autoApprove),
                on_expiry=esc.onExpiry, fs_path=fs[0] if fs else None,
                fs_access="read" if fs and fs[1] == "read" else "write" if fs else None,
                destination=destination,
            )
            rec = self.escalations().raise_block(ctx)
            self._states[rec.id] = str(getattr(rec, "state", ""))
        except StoreError as e:
            return None, f"the escalation could not be recorded: {e.message}"
        except ImportError as e:  # escalation package incomplete: say so, never drop silently
            return None, f"escalations unavailable ({e})"
        note = None
        status = getattr(rec, "delivery_status", None)
        if status in ("failed", "retrying"):
            note = f"webhook delivery for {rec.id} is {status}; it stays in the outbox " \
                   "(`glassbreak escalations show " + rec.id + "`)"
        return rec.id, note

    # -- spawn and supervise ----------------------------------------------------------------------
    def _layers(self, req: RunRequest, binary: str | None = None,
                path_grants: list[Any] | None = None) -> list[Any]:
        """The run's enforcement layers, in the order they are prepared (the child applies
        their parts in its own fixed order: sandbox.kernel.child.STEPS)."""
        from sandbox.run.layers import ExecGateLayer, LandlockLayer, NetworkLayer, SeccompLayer

        use_gate = "exec-gate" not in req.degraded
        use_ebpf = "ebpf" not in req.degraded
        layers: list[Any] = []
        landlock = None
        if "landlock" not in req.degraded:
            landlock = LandlockLayer(landlock_abi(), binary=binary, fs_grants=[
                (g.fs_path, g.fs_access) for g in path_grants or []],
                network="network" not in req.degraded)
            layers.append(landlock)
        tracer = self.tracer() if use_ebpf else None
        network = self.network() if "network" not in req.degraded else None
        layers.append(SeccompLayer(lambda p, root, mediate: self._filter(p, use_gate, root,
                                                                          mediate)))
        gate = None
        if use_gate or tracer is not None:
            gate = ExecGateLayer(tracer, use_notify=use_gate)
            layers.append(gate)
        if network is not None:
            layers.append(NetworkLayer(network, gate, landlock))
        return layers

    def _spawn_and_supervise(self, req: RunRequest, run_id: str, strict: ResolvedProfile,
                             effective: ResolvedProfile, grant: Any | None, decision: Decision,
                             env: dict[str, str], cwd: str, record: Record) -> RunResult:
        from sandbox.kernel.cgroup import RunCgroup
        from sandbox.kernel.child import ChildSpec
        from sandbox.run.layers import RunContext

        for d in req.degraded:
            record(Degraded(what=d, why="switched off with --degraded"), sync=True)
        path_grants = self._path_grants(strict, req, record)
        # the run's grant window: the one that closes first (a path grant's included)
        window = min([g for g in (grant, *path_grants) if g is not None],
                     key=lambda g: float(getattr(g, "expires_at", 0) or 0), default=None)
        layers = self._layers(req, decision.binary, path_grants)
        creds = self._credentials_layer(req, run_id, strict, effective, grant)
        if creds is not None:
            layers.insert(0, creds)
        # exec the path as found (PATH lookup), not its realpath: a profile that allows
        # `python3` by name must see the same path at the exec gate as at the pre-check
        executable = _found_path(req.argv, env, cwd) or decision.binary or req.argv[0]
        cg = RunCgroup.create(run_id)
        names = ["pre-check"] + [n for n in ("landlock", "seccomp", "exec-gate", "ebpf",
                                             "network") if n not in req.degraded]
        record(RunStarted(
            profile=strict.name, profile_hash=strict.content_hash,
            effective_profile=effective.name, agent=req.agent, argv=list(req.argv), cwd=cwd,
            mode=req.mode, grant_id=getattr(grant, "id", None),
            approver=getattr(grant, "approver", None), layers=names,
            degraded=list(req.degraded), uid=req.uid if req.uid is not None else os.getuid(),
            pid=os.getpid(), user=req.user, agent_source=req.agent_source,
        ), show=False)

        def on_block(info: Any) -> str | None:
            d: Decision = info.decision
            esc, note = (None, None)
            if req.mode == "enforce" and d.verdict is Verdict.BLOCK:
                fs = getattr(info, "fs_path", None)
                esc, note = self._raise(strict, d, Layer(info.layer), req, info.cwd or cwd, env,
                                        run_id, info.ancestry, info.recent_execs, info.sha256,
                                        fs=(fs, info.fs_access) if fs else None,
                                        destination=getattr(info, "destination", None))
            if note:
                record(Degraded(what="webhook", why=note))
            return esc

        rejected: set[str] = set()

        def on_reject(ev: Any) -> None:  # polled every second: each rejected grant said once
            if ev.grant_id not in rejected:
                rejected.add(ev.grant_id)
                record(ev, sync=True)

        last: list[tuple[float, list[Any]]] = []

        def destination_grants() -> list[Any]:
            # only grants whose signature (destination included) verifies (escalation.service);
            # one store read serves the layers that ask while the run starts (Landlock, then
            # the network layer); the network layer polls every second after that
            now = time.monotonic()
            if last and now - last[0][0] < 0.25:
                return last[0][1]
            grants: list[Any] = self.escalations().destination_grants(
                agent=req.agent, profile=strict.name, on_reject=on_reject)
            last[:] = [(now, grants)]
            return grants

        run = RunContext(run_id=run_id, mode=req.mode, strict=strict, effective=effective,
                         cgroup=cg, env=env, cwd=cwd, record=record, on_block=on_block,
                         uid=req.uid, argv=list(req.argv), agent=req.agent,
                         destination_grants=destination_grants if req.mode == "enforce"
                         else None)
        spec = ChildSpec(list(req.argv), executable=executable, env=env, cwd=cwd,
                         cgroup_procs=cg.procs_path, stdin=req.stdin, stdout=req.stdout,
                         stderr=req.stderr, uid=req.uid, gid=req.gid, groups=req.groups)
        child = None
        prepared: list[Any] = []
        result = RunResult(run_id, EXIT_RUNNER_FAILED)
        try:
            for layer in layers:
                prepared.append(layer)
                layer.prepare(run, spec)
            child = spec.spawn()
            for layer in layers:
                layer.started(run, child)
            if req.on_spawn is not None:
                req.on_spawn(child.pid, cg)
            result = self._loop(req, run, child, layers, window)
        finally:
            try:
                for layer in reversed(prepared):
                    try:
                        layer.close()
                    except Exception:  # noqa: BLE001 - every layer closes; the run still ends
                        if child is None:
                            raise
            finally:
                cg.kill()
                cg.wait_empty(timeout=2.0)
                cg.remove()
                if child is not None:
                    child.close()  # its pidfd, listener and report socket (the daemon's fds)
        return result

    def _credentials_layer(self, req: RunRequest, run_id: str, strict: ResolvedProfile,
                           effective: ResolvedProfile, grant: Any | None) -> Any | None:
        """The effective profile's credentials (sandbox.run.credentials), first of the layers:
        the filesystem layer learns the run's credential directory from it. None when no tier
        of the run (strict, effective, the relaxed profile) has credentials."""
        if not (strict.credentials or effective.credentials or
                strict.escalation.relaxedProfile):
            return None
        from sandbox.run.credentials import CredentialsLayer, tiers

        concerned = tiers(strict, effective)
        if not concerned:
            return None
        from sandbox.run.caller import is_profile_path
        from sandbox.run.secretmask import SecretMask

        mask = self._masks[run_id] = SecretMask()
        # a profile file root named itself (and what it extends) is root's choice
        root_file = req.uid in (None, 0) and os.geteuid() == 0 and is_profile_path(req.profile)
        return CredentialsLayer(grant=grant, agent=req.agent, uid=req.uid, gid=req.gid,
                                mask=mask, root_chain=[*strict.sources, *effective.sources]
                                if root_file else (), tiers=concerned)

    def _filter(self, profile: ResolvedProfile, use_gate: bool, root: bool = False,
                mediate: bool = False) -> Any:
        """The profile's seccomp filter, compiled once per exact seccomp policy (its JSON, ~20
        µs to make): a daemon's warm runs skip libseccomp (~3 ms). `root`: the run is uid 0
        (the root guard: sandbox.kernel.seccomp.ROOT_GUARDS); `mediate`: its chmod, chown and
        utime go to the supervisor (sandbox.run.attrgate)."""
        from sandbox.kernel.seccomp import compile_filter

        key = (profile.seccomp.model_dump_json(), use_gate, root, mediate)
        filt = self._filters.get(key)
        if filt is None:
            filt = compile_filter(profile.seccomp, exec_notify=use_gate, guard_root=root,
                                  mediate_root=mediate)
            if len(self._filters) >= 64:
                self._filters.clear()
            self._filters[key] = filt
        return filt

    def _loop(self, req: RunRequest, run: Any, child: Any, layers: list[Any],
              grant: Any | None) -> RunResult:
        sel = selectors.DefaultSelector()  # epoll: no limit on fd numbers
        sel.register(child.pidfd, selectors.EVENT_READ, None)
        for layer in layers:
            for fd in layer.fds():
                sel.register(fd, selectors.EVENT_READ, layer)
        grant_deadline = _grant_deadline(grant)
        next_grant_poll = time.monotonic() + 1.0
        grant_open = grant is not None
        grant_killed = False
        status: int | None = None
        unsubscribe, wake = self._watch_revocations(grant, sel)
        try:
            while status is None:
                timeout = 1.0
                if grant_open and grant_deadline is not None:
                    timeout = max(0.0, min(timeout, grant_deadline - time.time()))
                pushed: bool | str = False
                for key, _ in sel.select(timeout):
                    if key.data == "revoked":
                        pushed = _drain(key.fd)
                    elif key.data is None:
                        status = _reap(child.pid)
                    else:
                        key.data.handle(key.fd)
                for layer in layers:
                    layer.tick()
                fatal = next(((lay, lay.fatal) for lay in layers if lay.fatal), None)
                if fatal is not None:
                    lay, why = fatal
                    run.record(EventsLost(count=getattr(lay, "lost", 0) or 1, source=why),
                               sync=True)
                    run.cgroup.kill()
                    if status is None:
                        status = _reap(child.pid, block=True)
                    from sandbox.run.layers import LayerResult

                    found = LayerResult()
                    for layer in layers:
                        layer.finish(run, found)
                    return RunResult(run.run_id, EXIT_RUNNER_FAILED, decision="error",
                                     reason=f"fail closed: {why}", layer="ebpf",
                                     execs=found.execs, blocked=found.blocked)
                if grant_open and status is None:
                    why = None
                    if grant_deadline is not None and time.time() >= grant_deadline:
                        why = "expired"
                    elif pushed or time.monotonic() >= next_grant_poll:
                        # a pushed revocation is confirmed with the store; the 1 s poll stays
                        # as the fallback for a lost push
                        next_grant_poll = time.monotonic() + 1.0
                        why = "revoked" if pushed == "*" else self._grant_closed(grant)
                    if why:
                        grant_open = False
                        grant_killed = self._close_grant(why, grant, run, layers)
            if status is None:
                status = _reap(child.pid, block=True)
        finally:
            sel.close()
            if unsubscribe is not None:
                unsubscribe()
            for fd in wake:
                os.close(fd)
        return self._result(run, status, child, layers, grant_killed)

    def _watch_revocations(self, grant: Any | None, sel: selectors.BaseSelector
                           ) -> tuple[Callable[[], None] | None, tuple[int, ...]]:
        """Wake the run loop as soon as any host revokes this run's grant (Redis pub/sub;
        SQLite is polled by the store). A lost channel ("*") counts as a revocation."""
        if grant is None:
            return None, ()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        sel.register(r, selectors.EVENT_READ, "revoked")

        def on_revoke(grant_id: str) -> None:
            if grant_id in ("*", grant.id):
                try:
                    os.write(w, b"*" if grant_id == "*" else b"r")
                except OSError:
                    pass

        try:
            stop = self.escalations().subscribe_revocations(on_revoke)
        except (StoreError, OSError):
            stop = None  # the 1 s poll still runs, and it fails closed on a store error
        return stop, (r, w)

    def _grant_closed(self, grant: Any) -> str | None:
        try:
            st = self.escalations().grant_status(grant.id)
        except StoreError:
            return "revoked"  # fail closed: a store we cannot reach honours no grant
        return st if st in ("expired", "revoked") else None

    def _close_grant(self, why: str, grant: Any, run: Any, layers: list[Any]) -> bool:
        """The window closed: strict profile for new execs; end processes started under it."""
        for layer in layers:
            layer.narrow(run.strict)
        # the stricter wins: processes are ended unless both profiles say keep
        kill = "kill" in (run.effective.escalation.onExpiry, run.strict.escalation.onExpiry)
        pids = run.cgroup.pids() if kill else []
        if kill:
            run.cgroup.kill()
        run.record(GrantEnded(grant_id=grant.id, why=why,  # type: ignore[arg-type]
                              killed_pids=list(pids)), sync=True)
        return kill

    def _result(self, run: Any, status: int, child: Any, layers: list[Any],
                grant_killed: bool) -> RunResult:
        from sandbox.run.layers import LayerResult

        found = LayerResult(status=status)
        for layer in layers:
            layer.finish(run, found)
        res = RunResult(run.run_id, 0, execs=found.execs, blocked=found.blocked)
        if found.first_block is not None:
            res.rule_id, res.reason, res.layer, res.escalation_id = found.first_block
        elif found.reason is not None:  # e.g. the command is not in the exec envelope
            res.reason, res.layer = found.reason, found.layer
        if os.WIFEXITED(status):
            res.exit_code = os.WEXITSTATUS(status)
        elif os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            res.signal = sig
            res.exit_code = EXIT_SIGNAL_BASE + sig
            died = LayerResult()
            if any(layer.explain_death(run, child.pid, sig, died) for layer in layers):
                res.reason, res.layer = died.reason, died.layer
            elif grant_killed:
                res.reason = "the grant's window closed; processes started under it were ended"
        if res.blocked:
            res.decision = "block"
        return res


def landlock_abi() -> int:
    """The kernel's Landlock ABI; a missing or too old Landlock refuses the run (exit 125)."""
    from sandbox.kernel.landlock import LandlockUnavailable, abi_version

    try:
        abi = abi_version()
    except LandlockUnavailable as e:
        raise KernelFeatureMissing(
            f"{e}: runs need it for their filesystem rules and self-protection",
            hint="run `glassbreak doctor`; `--degraded landlock` runs without it (root only, "
            "recorded in the audit log)") from None
    if abi < 6:
        raise KernelFeatureMissing(
            f"this kernel's Landlock ABI is {abi}; runs need 6 (Linux >= 6.12: signal and "
            "abstract-socket scopes)", hint="run `glassbreak doctor`; `--degraded landlock` runs "
            "without it (root only, recorded in the audit log)")
    return abi


def _grant_deadline(grant: Any | None) -> float | None:
    if grant is None:
        return None
    exp = getattr(grant, "expires_at", None)
    return float(exp) if exp else None


def _drain(fd: int) -> bool | str:
    """Read the wake-up pipe: "*" when the revocation channel was lost, else True."""
    data = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return "*" if b"*" in data else bool(data)


def _reap(pid: int, block: bool = False) -> int | None:
    while True:
        try:
            wpid, status = os.waitpid(pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue
        if wpid == 0:
            return None
        return status


def _found_path(argv: list[str], env: dict[str, str], cwd: str) -> str | None:
    """argv[0] as execvp finds it (not its realpath, and not a multi-call applet's path)."""
    try:
        from sandbox.policy.resolve import resolve_program

        return resolve_program(argv[0], env.get("PATH"), cwd).path_as_found
    except GlassbreakError:
        return None


def _resolved_binary(argv: list[str], env: dict[str, str], cwd: str) -> str | None:
    try:
        from sandbox.policy.resolve import resolve_program

        return resolve_program(argv[0], env.get("PATH"), cwd).realpath
    except GlassbreakError:
        return None
