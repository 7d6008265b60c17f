"""`glassbreak profile list|show|validate|explain|schema|suggest-network`: for the people who
write profiles.

`sandbox.cli.main` adds the `profile` group lazily; it can also be used alone (CliRunner in tests).
Exit codes: 0 ok; 125 a profile is invalid (file:line on stderr); 2 usage errors.
`explain` prints the decision and exits 0 whatever the verdict (`glassbreak check` is the one
that exits 126 on a block).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, NoReturn

import click

from sandbox.errors import EXIT_RUNNER_FAILED, GlassbreakError

OUTPUT = click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text",
                      show_default=True, help="json for machines")


def _fail(err: GlassbreakError, output: str = "text") -> NoReturn:
    if output == "json":
        click.echo(json.dumps(err.to_dict()), err=True)
    else:
        click.echo(err.render(), err=True)
    sys.exit(err.exit_code)


def _syscall_check() -> Any:
    try:
        from sandbox.policy.loader import seccomp_syscall_check

        return seccomp_syscall_check()
    except (ImportError, OSError, AttributeError):  # libseccomp missing: seccomp compile checks
        return None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def profile() -> None:
    """Author, validate and explain profiles (the search path: `glassbreak profile list`)."""


@profile.command("list")
@OUTPUT
def list_cmd(output: str) -> None:
    """The profiles on the search path (the first of a name wins)."""
    from sandbox.paths import profile_search_path
    from sandbox.policy.loader import list_profiles

    rows = list_profiles()
    if output == "json":
        click.echo(json.dumps([{"name": n, "path": str(p), "description": d}
                               for n, p, d in rows]))
        return
    if not rows:
        dirs = ", ".join(str(d) for d in profile_search_path())
        click.echo(f"no profiles found (searched {dirs})", err=True)
        return
    width = max(len(n) for n, _, _ in rows)
    for n, p, d in rows:
        click.echo(f"{n:<{width}}  {d}")
        click.echo(f"{'':<{width}}  {p}")


@profile.command()
@click.argument("name")
@click.option("--output", "-o", type=click.Choice(["yaml", "json"]), default="yaml",
              show_default=True)
def show(name: str, output: str) -> None:
    """NAME (or a path) with its `extends` chain merged: what the policy enforces."""
    from sandbox.policy.loader import load_profile

    try:
        prof = load_profile(name)
    except GlassbreakError as e:
        _fail(e)
    data = prof.model_dump(mode="json")
    if output == "json":
        click.echo(json.dumps(data, indent=2))
    else:
        import yaml

        click.echo(yaml.safe_dump(data, sort_keys=False, width=100), nl=False)


@profile.command()
@click.argument("paths", nargs=-1, required=True)
@OUTPUT
def validate(paths: tuple[str, ...], output: str) -> None:
    """Load each PATH (or name): syntax, fields, extends, syscall names and examples.
    Exit 0 when all are valid, 125 otherwise."""
    from sandbox.policy.loader import load_profile

    check = _syscall_check()
    results: list[dict[str, Any]] = []
    for p in paths:
        try:
            prof = load_profile(p, validate_syscalls=check)
        except GlassbreakError as e:
            results.append({"path": p, "ok": False, "error": e.message, "hint": e.hint})
            continue
        n_ex = sum(len(ex.allow) + len(ex.block) + len(ex.deny) for ex in [
            prof.examples, prof.exec.examples, *(r.examples for r in prof.safeBins.values())])
        results.append({"path": p, "ok": True, "name": prof.name, "hash": prof.content_hash,
                        "chain": prof.chain, "examples": n_ex})
    if output == "json":
        click.echo(json.dumps(results))
    else:
        for r in results:
            if r["ok"]:
                click.echo(f"ok     {r['path']}  ({r['name']} {r['hash']}, chain "
                           f"{' -> '.join(r['chain'])}, {r['examples']} examples pass)")
            else:
                click.echo(f"error  {r['path']}", err=True)
                click.echo("  " + r["error"].replace("\n", "\n  "), err=True)
                if r["hint"]:
                    click.echo(f"  hint: {r['hint']}", err=True)
    if not all(r["ok"] for r in results):
        sys.exit(EXIT_RUNNER_FAILED)


def _steps(result: Any) -> list[str]:
    steps = getattr(result, "steps", result)
    if isinstance(steps, list | tuple):
        return [str(s) for s in steps]
    return [str(steps)] if steps else []


@profile.command(context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@OUTPUT
@click.option("--lenient", is_flag=True,
              help="judge programs missing on this machine, or found only outside the trusted "
              "directories, by name (as examples are checked)")
def explain(name: str, command: tuple[str, ...], output: str, lenient: bool) -> None:
    """How profile NAME decides COMMAND: glassbreak profile explain k8s-readonly -- kubectl ...

    Prints the steps and the decision; nothing runs. Exits 0 whatever the verdict."""
    from sandbox.policy import check as policy
    from sandbox.policy.loader import load_profile

    argv = list(command)
    kw: dict[str, Any] = {"cwd": os.getcwd(), "env_path": os.environ.get("PATH"),
                          "lenient": lenient}
    try:
        prof = load_profile(name)
        decision = policy.check_argv(prof, argv, **kw)
        steps: list[str] = []
        explain_fn = getattr(policy, "explain", None)
        if explain_fn is not None:
            try:
                res = explain_fn(prof, argv, **kw)
            except TypeError:
                res = explain_fn(prof, argv)
            steps = _steps(res)
            decision = getattr(res, "decision", decision)
    except GlassbreakError as e:
        _fail(e, output)
    rule = None
    if decision.binary or argv:
        key = os.path.basename(decision.binary or argv[0])
        for b, r in prof.safeBins.items():
            if b in (decision.binary, argv[0], key):
                rule = {"binary": b, **r.model_dump(exclude_defaults=True, mode="json")}
    if output == "json":
        click.echo(json.dumps({"profile": prof.name, "profile_hash": prof.content_hash,
                               "chain": prof.chain, "steps": steps, "safeBin": rule,
                               **decision.to_dict()}))
        return
    click.echo(f"profile {prof.name} ({prof.content_hash}; chain {' -> '.join(prof.chain)})")
    click.echo(f"argv    {json.dumps(argv)}")
    for i, s in enumerate(steps, 1):
        click.echo(f"  {i}. {s}")
    if rule:
        click.echo(f"safeBins rule for {rule['binary']}: "
                   + json.dumps({k: v for k, v in rule.items() if k not in ("binary",
                                                                           "examples")}))
    word = {"allow": "ALLOW", "block": "BLOCK (escalatable)", "deny": "DENY (never)"}
    click.echo(f"{word[decision.verdict.value]}  rule={decision.rule_id}")
    click.echo(f"  {decision.reason}")
    if decision.binary:
        click.echo(f"  binary: {decision.binary}")


@profile.command("suggest-network")
@click.argument("run_id")
@OUTPUT
def suggest_network(run_id: str, output: str) -> None:
    """RUN_ID's destinations (best from a `--mode monitor` run) as `network.allow` and
    `network.unix` entries, for review: a name where a DNS answer explains an address, the
    address otherwise. Nothing is written; paste what you keep into the profile."""
    from sandbox.audit import read_events
    from sandbox.run.network import suggest_allow

    events = list(read_events(run_id=run_id))
    if not events:
        _fail(GlassbreakError(f"no events for run {run_id!r} in the audit log",
                              hint="run ids are printed in the JSON result of `glassbreak run "
                              "--output json`; check GLASSBREAK_STATE_DIR"), output)
    sug = suggest_allow(events)
    if output == "json":
        click.echo(json.dumps({"run_id": run_id, **sug}))
        return
    started = next((e for e in events if e.get("type") == "run_started"), {})
    click.echo(f"# destinations of {run_id} (profile {started.get('profile', '?')}, mode "
               f"{started.get('mode', '?')}): review before use")
    if not sug["allow"] and not sug["unix"]:
        click.echo("# (the run reached no destination)")
        return
    click.echo("network:")
    for key in ("allow", "unix"):
        if sug[key]:
            click.echo(f"  {key}:")
            width = max(len(json.dumps(x["entry"])) for x in sug[key])
            for x in sug[key]:
                click.echo(f"    - {json.dumps(x['entry']):<{width}}  # {x['why']}, seen "
                           f"{x['seen']}x")


@profile.command()
def schema() -> None:
    """The JSON Schema of the profile format."""
    from sandbox.policy.loader import profile_schema

    click.echo(json.dumps(profile_schema(), indent=2))
