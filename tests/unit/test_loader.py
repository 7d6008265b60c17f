"""Profile loading: file:line errors, search path, extends semantics, fragments, examples."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from sandbox.errors import ProfileError
from sandbox.policy import loader
from sandbox.policy.decision import Decision, Verdict
from sandbox.policy.loader import list_profiles, load_profile, load_raw, profile_schema, resolve
from sandbox.policy.profile import ResolvedProfile


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Search path: tmp/lib first, no user config; the shipped profiles stay last."""
    lib = tmp_path / "lib"
    lib.mkdir()
    monkeypatch.setenv("GLASSBREAK_PROFILE_PATH", str(lib))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    loader._CACHE.clear()
    return lib


def write(d: Path, name: str, text: str) -> Path:
    p = d / name
    p.write_text(textwrap.dedent(text))
    return p


def load(ref: str | Path) -> ResolvedProfile:
    return resolve(str(ref), examples=False)


def fake_check(profile: ResolvedProfile, argv: list[str], **kw: object) -> Decision:
    """A stand-in policy: rm blocks, anything with --force denies, the rest is allowed."""
    assert kw.get("lenient") is True
    if "--force" in argv:
        return Decision(Verdict.DENY, "fake:force", "no force", tuple(argv))
    if argv[0] == "rm":
        return Decision(Verdict.BLOCK, "fake:rm", "rm needs approval", tuple(argv))
    return Decision(Verdict.ALLOW, "fake:ok", "fine", tuple(argv))


# ------------------------------------------------------------------------- errors with lines


def test_unknown_key_names_file_line_field_and_suggests(tmp_path: Path) -> None:
    p = write(tmp_path, "k.yaml", """\
        name: k
        safeBins:
          kubectl:
            allowedFlags: [-A]
            forbidenFlags: [--force]
        """)
    with pytest.raises(ProfileError) as ei:
        load(p)
    e = ei.value
    assert f"{p}:5" in e.message
    assert "safeBins.kubectl.forbidenFlags" in e.message
    assert "unknown field" in e.message
    assert e.hint is not None and "did you mean forbiddenFlags?" in e.hint
    assert e.exit_code == 125


def test_wrong_value_points_at_the_list_item(tmp_path: Path) -> None:
    p = write(tmp_path, "k.yaml", """\
        name: k
        seccomp:
          rules:
            - {action: "errno:EPERM", syscalls: [ptrace]}
            - action: explode
              syscalls: [bpf]
        """)
    with pytest.raises(ProfileError) as ei:
        load(p)
    assert f"{p}:5" in ei.value.message
    assert "seccomp.rules[1].action" in ei.value.message
    assert "unknown seccomp action" in ei.value.message


def test_flag_that_is_not_a_flag(tmp_path: Path) -> None:
    p = write(tmp_path, "k.yaml", """\
        name: k
        safeBins:
          ls:
            forbiddenFlags:
              - -R
              - recursive
        """)
    with pytest.raises(ProfileError) as ei:
        load(p)
    assert f"{p}:6" in ei.value.message and "safeBins.ls.forbiddenFlags[1]" in ei.value.message


def test_top_level_unknown_key_hint(tmp_path: Path) -> None:
    p = write(tmp_path, "k.yaml", "name: k\nowner: [me]\n")
    with pytest.raises(ProfileError) as ei:
        load(p)
    assert f"{p}:2" in ei.value.message and "did you mean owners?" in (ei.value.hint or "")


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    p = write(tmp_path, "k.yaml", "name: k\nsafeBins:\n  ls: {forbiddenFlags: [-R\n")
    with pytest.raises(ProfileError) as ei:
        load(p)
    assert "invalid YAML" in ei.value.message and f"{p}:" in ei.value.message


def test_json_errors_have_lines(tmp_path: Path) -> None:
    p = write(tmp_path, "j.json", '{\n  "name": "j",\n  "safeBins": {\n    "ls": {\n'
              '      "maxPositional": -1\n    }\n  }\n}\n')
    with pytest.raises(ProfileError) as ei:
        load(p)
    assert f"{p}:5" in ei.value.message and "safeBins.ls.maxPositional" in ei.value.message
    bad = write(tmp_path, "bad.json", '{\n  "name": "j",\n}\n')
    with pytest.raises(ProfileError, match=rf"{bad}:3: invalid JSON"):
        load(bad)


def test_duplicate_keys_are_an_error(tmp_path: Path) -> None:
    p = write(tmp_path, "d.yaml", "name: d\nexec:\n  default: deny\n  default: allow\n")
    with pytest.raises(ProfileError, match=rf"{p}:4: duplicate key 'default'"):
        load(p)


def test_not_a_mapping_and_wrong_extension(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="must be a mapping"):
        load(write(tmp_path, "l.yaml", "- a\n- b\n"))
    with pytest.raises(ProfileError, match="not a profile file"):
        load(write(tmp_path, "p.txt", "name: p\n"))
    with pytest.raises(ProfileError, match="no profile named 'nosuch'"):
        load("nosuch")


def test_validate_syscalls_hook_names_the_line(tmp_path: Path) -> None:
    p = write(tmp_path, "s.yaml", """\
        name: s
        seccomp:
          rules:
            - action: "errno:EPERM"
              syscalls:
                - ptrace
                - ptrase
        """)
    with pytest.raises(ProfileError) as ei:
        resolve(str(p), examples=False, validate_syscalls=lambda n: n != "ptrase")
    assert f"{p}:7" in ei.value.message and "ptrase" in ei.value.message
    assert load(p).seccomp.rules[0].syscalls == ["ptrace", "ptrase"]  # no hook: not checked here


# ------------------------------------------------------------------------- finding profiles


def test_search_path_first_wins_and_list(_isolated: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    second = tmp_path / "second"
    second.mkdir()
    write(_isolated, "alpha.yaml", "name: alpha\ndescription: first\n")
    write(second, "alpha.yaml", "name: alpha\ndescription: second\n")
    write(second, "beta.json", '{"name": "beta", "description": "b"}')
    monkeypatch.setenv("GLASSBREAK_PROFILE_PATH", f"{_isolated}:{second}")
    assert load("alpha").description == "first"
    assert load("beta").sources == [str((second / "beta.json").resolve())]
    rows = {n: (p, d) for n, p, d in list_profiles()}
    assert rows["alpha"] == (_isolated / "alpha.yaml", "first")
    assert rows["beta"][1] == "b"
    assert "base" in rows and "k8s-readonly" in rows  # the shipped ones come last


def test_extends_by_name_and_relative_path(_isolated: Path, tmp_path: Path) -> None:
    write(_isolated, "parent.yaml", "name: parent\nowners: [a]\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    write(sub, "sibling.yaml", "name: sibling\nowners: [b]\n")
    child = write(sub, "child.yaml", "name: child\nextends: [parent, ./sibling.yaml]\n"
                  "owners: [c]\n")
    r = load(child)
    assert r.chain == ["child", "parent", "sibling"]
    assert r.owners == ["a", "b", "c"]


def test_extends_missing_parent_says_so(tmp_path: Path) -> None:
    p = write(tmp_path, "c.yaml", "name: c\nextends: nope-such\n")
    with pytest.raises(ProfileError, match="no profile named 'nope-such'"):
        load(p)
    p = write(tmp_path, "d.yaml", "name: d\nextends: ./missing.yaml\n")
    with pytest.raises(ProfileError, match="profile file not found"):
        load(p)


def test_extends_cycle_is_named(_isolated: Path) -> None:
    write(_isolated, "a.yaml", "name: a\nextends: b\n")
    write(_isolated, "b.yaml", "name: b\nextends: c\n")
    write(_isolated, "c.yaml", "name: c\nextends: a\n")
    with pytest.raises(ProfileError, match=r"cycle: a -> b -> c -> a"):
        load("a")
    write(_isolated, "self.yaml", "name: self\nextends: self\n")
    with pytest.raises(ProfileError, match=r"cycle: self -> self"):
        load("self")


# ------------------------------------------------------------------------- extends semantics


def chain(lib: Path, parent: str, child: str) -> ResolvedProfile:
    write(lib, "p.yaml", "name: p\n" + textwrap.dedent(parent))
    write(lib, "c.yaml", "name: c\nextends: p\n" + textwrap.dedent(child))
    return load("c")


def test_safebins_lists_union_and_allowlists_intersect(_isolated: Path) -> None:
    r = chain(_isolated, """\
        safeBins:
          kubectl:
            allowedValueFlags: [-n, -o, --dry-run]
            allowedFlags: [-A, -w]
            forbiddenFlags: [--force]
            restrictedCommands: [delete]
            allowedCommands: [get, describe, config]
        """, """\
        safeBins:
          kubectl:
            allowedValueFlags: [-n, --dry-run=client, --context]
            forbiddenFlags: [--grace-period]
            deniedFlags: [--kubeconfig]
            restrictedCommands: [apply]
            deniedCommands: [exec]
            allowedCommands: [get, config view, logs]
          ls: {forbiddenFlags: [-R]}
        """)
    k = r.safeBins["kubectl"]
    assert k.forbiddenFlags == ["--force", "--grace-period"]
    assert k.deniedFlags == ["--kubeconfig"]
    assert k.restrictedCommands == ["delete", "apply"]
    assert k.deniedCommands == ["exec"]
    assert k.allowedValueFlags == ["-n", "--dry-run=client"]  # --context was not allowed above
    assert k.allowedFlags == ["-A", "-w"]  # not given by the child: inherited
    assert k.allowedCommands == ["get", "config view"]
    assert r.safeBins["ls"].forbiddenFlags == ["-R"]  # a new binary (no parent allowlist)


def test_child_allowlist_where_parent_had_none_and_partial_lists(_isolated: Path) -> None:
    r = chain(_isolated, """\
        safeBins:
          git: {forbiddenFlags: [-c]}
          kubectl: {allowedValueFlags: [-n]}
        """, """\
        safeBins:
          git: {allowedCommands: [status, log], allowedFlags: [--oneline]}
          kubectl: {allowedFlags: [-A]}
        """)
    assert r.safeBins["git"].allowedCommands == ["status", "log"]
    assert r.safeBins["git"].allowedFlags == ["--oneline"]
    # the parent allowed only -n: a child cannot add the boolean -A
    assert r.safeBins["kubectl"].allowedFlags == []
    assert r.safeBins["kubectl"].allowedValueFlags == ["-n"]


def test_positional_bounds_and_on_violation_take_the_stricter(_isolated: Path) -> None:
    r = chain(_isolated, """\
        safeBins:
          uniq: {minPositional: 1, maxPositional: 2, onViolation: deny}
          cut: {maxPositional: 1}
        """, """\
        safeBins:
          uniq: {minPositional: 0, maxPositional: 5, onViolation: block}
          cut: {maxPositional: 3, minPositional: 1}
        """)
    u, c = r.safeBins["uniq"], r.safeBins["cut"]
    assert (u.minPositional, u.maxPositional, u.onViolation) == (1, 2, "deny")
    assert (c.minPositional, c.maxPositional, c.onViolation) == (1, 1, "block")


def test_exec_allow_child_may_narrow_not_widen(_isolated: Path) -> None:
    parent = """\
        exec:
          allow: ["/usr/bin/*", cat]
          deny: [/usr/bin/rm]
          default: block
        """
    r = chain(_isolated, parent, """\
        exec:
          allow: [/usr/bin/ls, "/usr/bin/*grep", cat, /bin/cat]
          deny: [/usr/bin/dd]
          block: [/usr/bin/curl]
          default: deny
        """)
    assert r.exec.allow == ["/usr/bin/ls", "/usr/bin/*grep", "cat", "/bin/cat"]
    assert r.exec.deny == ["/usr/bin/rm", "/usr/bin/dd"]
    assert r.exec.block == ["/usr/bin/curl"]
    assert r.exec.default == "deny"
    with pytest.raises(ProfileError) as ei:
        chain(_isolated, parent, "exec:\n  allow:\n    - /usr/bin/ls\n    - /opt/tool\n")
    assert f"{_isolated / 'c.yaml'}:6" in ei.value.message and "/opt/tool" in ei.value.message
    assert "relax: true" in (ei.value.hint or "")
    with pytest.raises(ProfileError, match="not allowed by the profile"):
        chain(_isolated, parent, "exec:\n  allow: ['*']\n")


def test_exec_default_cannot_loosen_and_fileless(_isolated: Path) -> None:
    r = chain(_isolated, "exec: {default: deny}\n", "exec: {default: allow}\n")
    assert r.exec.default == "deny"
    r = chain(_isolated, "exec: {default: block}\n", "exec: {allow: [ls]}\n")
    assert r.exec.default == "block" and r.exec.allow == ["ls"]  # first allowlist: fine
    with pytest.raises(ProfileError, match="allowFileless"):
        chain(_isolated, "exec: {allowFileless: false}\n", "exec: {allowFileless: true}\n")
    r = chain(_isolated, "exec: {trustedDirs: [/usr/bin, /bin]}\n",
              "exec: {trustedDirs: [/usr/bin, /opt/bin]}\n")
    assert r.exec.trustedDirs == ["/usr/bin"]


def test_new_safebin_under_a_parent_allowlist(_isolated: Path) -> None:
    parent = "exec: {allow: [/usr/bin/kubectl, cat]}\n"
    r = chain(_isolated, parent, "safeBins:\n  kubectl: {forbiddenFlags: [--force]}\n")
    assert "kubectl" in r.safeBins
    with pytest.raises(ProfileError, match="safeBins.python3: adds a program"):
        chain(_isolated, parent, "safeBins:\n  python3: {forbiddenFlags: [-c]}\n")


def test_seccomp_stricter_action_wins_per_syscall(_isolated: Path) -> None:
    r = chain(_isolated, """\
        seccomp:
          defaultAction: allow
          rules:
            - {id: p1, action: "errno:EPERM", syscalls: [ptrace, bpf, mount]}
            - {id: p2, action: kill_process, syscalls: [kexec_load]}
            - {id: p3, action: log, syscalls: [clone], args: [{arg: 0, op: eq, value: 1}]}
        """, """\
        seccomp:
          defaultAction: "errno:EPERM"
          rules:
            - {id: c1, action: kill_process, syscalls: [ptrace]}
            - {id: c2, action: log, syscalls: [kexec_load, mount]}
            - {id: c3, action: "errno:EACCES", syscalls: [bpf, clone]}
        """)
    by = {s: (rule.id, rule.action) for rule in r.seccomp.rules for s in rule.syscalls
          if not rule.args}
    assert by == {"ptrace": ("c1", "kill_process"), "bpf": ("c3", "errno:EACCES"),
                  "mount": ("p1", "errno:EPERM"), "kexec_load": ("p2", "kill_process"),
                  "clone": ("c3", "errno:EACCES")}
    assert not [x for x in r.seccomp.rules if x.args]  # log on clone < errno: dropped
    assert [x.id for x in r.seccomp.rules] == ["p1", "p2", "c1", "c3"]  # parent first
    assert r.seccomp.defaultAction == "errno:EPERM"
    r = chain(_isolated, "seccomp: {defaultAction: kill_process}\n",
              "seccomp: {defaultAction: allow}\n")
    assert r.seccomp.defaultAction == "kill_process"


def test_owners_union_and_escalation_fieldwise(_isolated: Path) -> None:
    r = chain(_isolated, """\
        owners: [security]
        escalation: {relaxedProfile: wide, ttl: 10m, maxTtl: 1h, approvers: [boss]}
        """, """\
        owners: [sre, security]
        escalation: {maxTtl: 5m, pendingTtl: 2m}
        """)
    assert r.owners == ["security", "sre"]
    e = r.escalation
    assert (e.relaxedProfile, e.maxTtl, e.pendingTtl, e.approvers) == ("wide", "5m", "2m",
                                                                        ["boss"])
    assert e.ttl == "5m"  # clamped to the new maxTtl
    r = chain(_isolated, "escalation: {maxTtl: 10m}\n", "escalation: {maxTtl: 2h}\n")
    assert r.escalation.maxTtl == "10m"  # cannot grow without relax
    with pytest.raises(ProfileError, match="exceeds maxTtl"):
        chain(_isolated, "escalation: {maxTtl: 10m}\n", "escalation: {ttl: 20m}\n")


def test_relax_replaces_where_given(_isolated: Path) -> None:
    r = chain(_isolated, """\
        owners: [security]
        safeBins:
          kubectl:
            allowedValueFlags: [-n]
            forbiddenFlags: [--force, --grace-period]
            restrictedCommands: [delete, apply]
            examples: {block: ["kubectl delete pod x"]}
        exec: {allow: [cat], default: deny}
        seccomp: {rules: [{action: "errno:EPERM", syscalls: [ptrace]}]}
        escalation: {relaxedProfile: c, maxTtl: 10m}
        examples: {block: ["kubectl apply -f x"]}
        """, """\
        relax: true
        safeBins:
          kubectl:
            restrictedCommands: []
            examples: {allow: ["kubectl delete pod x"]}
        exec: {allow: [cat, curl], default: block, allowFileless: true}
        escalation: {maxTtl: 1h}
        """)
    k = r.safeBins["kubectl"]
    assert k.restrictedCommands == []
    assert k.forbiddenFlags == ["--force", "--grace-period"]  # not given: kept
    assert k.allowedValueFlags == ["-n"]
    assert k.examples.allow == ["kubectl delete pod x"] and k.examples.block == []
    assert r.examples.block == []  # the parent's examples describe the stricter profile
    assert r.exec.allow == ["cat", "curl"] and r.exec.default == "block"
    assert r.exec.allowFileless is True
    assert r.seccomp.rules[0].syscalls == ["ptrace"]  # not given: kept
    assert r.owners == ["security"]
    assert r.escalation.maxTtl == "1h"
    assert r.escalation.relaxedProfile is None  # pointed at itself


def test_content_hash_stable_and_sensitive(_isolated: Path) -> None:
    write(_isolated, "h.yaml", "name: h\nowners: [a]\nsafeBins: {ls: {forbiddenFlags: [-R]}}\n")
    h1 = load("h").content_hash
    assert len(h1) == 16 and h1 == load("h").content_hash
    write(_isolated, "h.yaml", "# a comment\nowners: [a]\nname: h\n"
          "safeBins:\n  ls:\n    forbiddenFlags: [-R]\n")
    assert load("h").content_hash == h1  # formatting and key order do not matter
    write(_isolated, "h.yaml", "name: h\nowners: [a]\nsafeBins: {ls: {forbiddenFlags: [-r]}}\n")
    assert load("h").content_hash != h1


def test_load_profile_cache_sees_edits(_isolated: Path) -> None:
    write(_isolated, "e.yaml", "name: e\nowners: [a]\n")
    assert load_profile("e", examples=False).owners == ["a"]
    r1 = load_profile("e")  # no examples: the policy is not needed
    assert load_profile("e") is r1
    write(_isolated, "e.yaml", "name: e\nowners: [a, bb]\n")
    assert load_profile("e").owners == ["a", "bb"]


# ------------------------------------------------------------------------- examples


def test_examples_of_every_level_checked_against_the_final_profile(_isolated: Path) -> None:
    write(_isolated, "p.yaml", "name: p\nexamples: {allow: ['ls -l'], block: ['rm x']}\n")
    c = write(_isolated, "c.yaml", """\
        name: c
        extends: p
        safeBins:
          git:
            examples:
              deny: ["git push --force"]
              allow: ["git status"]
        """)
    r = resolve(str(c), check=fake_check)
    assert r.examples.allow == ["ls -l"] and r.examples.block == ["rm x"]
    seen: list[list[str]] = []

    def spy(p: ResolvedProfile, argv: list[str], **kw: object) -> Decision:
        seen.append(argv)
        return fake_check(p, argv, **kw)

    resolve(str(c), check=spy)
    assert sorted(map(tuple, seen)) == sorted([("ls", "-l"), ("rm", "x"), ("git", "status"),
                                               ("git", "push", "--force")])


def test_wrong_example_names_file_line_expected_actual(_isolated: Path) -> None:
    p = write(_isolated, "w.yaml", """\
        name: w
        safeBins:
          rm:
            examples:
              allow:
                - rm -rf "/tmp/a b"
        """)
    with pytest.raises(ProfileError) as ei:
        resolve(str(p), check=fake_check)
    m = ei.value.message
    assert f"{p}:6" in m and 'rm -rf "/tmp/a b"' in m
    assert "listed under allow" in m and "says block" in m and "fake:rm" in m
    assert "glassbreak profile explain w" in (ei.value.hint or "")
    write(_isolated, "q.yaml", "name: q\nexamples: {block: ['echo \"unclosed']}\n")
    with pytest.raises(ProfileError, match="cannot split it like a shell"):
        resolve("q", check=fake_check)


def test_parent_example_broken_by_child_is_reported_at_parent_line(_isolated: Path) -> None:
    write(_isolated, "p.yaml", "name: p\nexamples:\n  allow:\n    - kubectl delete --force\n")
    write(_isolated, "c.yaml", "name: c\nextends: p\n")
    with pytest.raises(ProfileError, match=rf"{_isolated / 'p.yaml'}:4: example"):
        resolve("c", check=fake_check)


# ------------------------------------------------------------------------- fragments


SEED = {"safeBins": {"mcporter": {
    "allowedValueFlags": ["--config", "--timeout"],
    "forbiddenFlags": ["--allow-http"],
    "restrictedCommands": ["auth", "config", "daemon"]}}}


def test_seed_safebins_object_loads_unchanged(tmp_path: Path) -> None:
    p = tmp_path / "seed.json"
    p.write_text(json.dumps(SEED))
    r = load(p)
    assert r.name == "seed"
    assert {b: rule.model_dump(exclude_defaults=True) for b, rule in r.safeBins.items()} \
        == SEED["safeBins"]
    bare = tmp_path / "bare.yaml"
    bare.write_text(json.dumps(SEED["safeBins"]))  # JSON is YAML too
    assert load(bare).safeBins == r.safeBins
    assert load_raw(bare).name == "bare"


def test_bare_fragment_errors_use_the_files_own_paths(tmp_path: Path) -> None:
    p = write(tmp_path, "frag.yaml", "mcporter:\n  forbiddenFlags: [--x]\n  forbidden: [--y]\n")
    with pytest.raises(ProfileError) as ei:
        load(p)
    assert f"{p}:3" in ei.value.message and "mcporter.forbidden" in ei.value.message
    assert "did you mean forbiddenFlags?" in (ei.value.hint or "")


def test_shipped_seed_fragment_is_the_plain_seed_format() -> None:
    from sandbox.paths import shipped_profiles_dir

    p = shipped_profiles_dir() / "mcporter.safebins.json"
    data = json.loads(p.read_text())
    assert list(data) == ["safeBins"]
    assert all(set(rule) <= {"allowedValueFlags", "forbiddenFlags", "restrictedCommands"}
               for rule in data["safeBins"].values())
    r = load(p)
    assert {b: x.model_dump(exclude_defaults=True) for b, x in r.safeBins.items()} \
        == data["safeBins"]
    full = load("mcporter")
    assert full.chain == ["mcporter", "base", "mcporter.safebins"]
    assert full.safeBins["mcporter"] == r.safeBins["mcporter"]


def test_schema_is_the_profile_format() -> None:
    s = profile_schema()
    assert s["title"] == "Profile"
    assert {"safeBins", "extends", "exec", "seccomp", "escalation"} <= set(s["properties"])
    assert s.get("additionalProperties") is False
