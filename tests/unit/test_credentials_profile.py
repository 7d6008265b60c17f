"""The `credentials:` section of the profile format (issue 14): strict validation with file:line
errors through the loader, merge rules under `extends` and `relax`, where each credential was
defined (only trusted files may carry sources), and the secret mask. Pure: no kernel."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sandbox.errors import ProfileError
from sandbox.policy import loader
from sandbox.policy.loader import resolve
from sandbox.policy.profile import Credential, ResolvedProfile
from sandbox.run.secretmask import SecretMask, fragments


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
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


def error(ref: Path) -> str:
    with pytest.raises(ProfileError) as ei:
        load(ref)
    return ei.value.message + "\n  hint: " + str(ei.value.hint)


STRICT = """\
    name: strict
    credentials:
      kubeconfig: {file: /etc/glassbreak/credentials/readonly.kubeconfig, env: KUBECONFIG}
      api: {daemonEnv: GB_API_READ, env: API_TOKEN, deliver: env}
    escalation: {relaxedProfile: ops}
    """
OPS = """\
    name: ops
    extends: strict
    relax: true
    credentials:
      kubeconfig:
        mint: kubectl create token ops-writer -n agents --duration {ttl}
        timeout: 5s
        env: KUBECONFIG
        template: "users: [{name: ops, user: {token: {token}}}]"
      api: null
    """


def test_two_tiers_resolve_with_their_origins(_isolated: Path) -> None:
    s = write(_isolated, "strict.yaml", STRICT)
    o = write(_isolated, "ops.yaml", OPS)
    strict, ops = load("strict"), load("ops")
    assert strict.credentials["kubeconfig"].source == "file"
    assert strict.credentials["api"].deliver == "env"
    assert strict.credentialOrigins == {"kubeconfig": str(s), "api": str(s)}
    assert set(ops.credentials) == {"kubeconfig"}  # `api: null` removed the inherited one
    k = ops.credentials["kubeconfig"]
    assert k.source == "mint" and k.timeout_seconds == 5 and k.deliver == "file"
    assert ops.credentialOrigins == {"kubeconfig": str(o)}
    # credentials are part of what the profile means (its hash), their origins are not
    assert strict.content_hash != load(write(_isolated, "strict2.yaml", STRICT.replace(
        "GB_API_READ", "GB_API_OTHER"))).content_hash


def test_a_child_adds_credentials_but_replaces_one_only_with_relax(_isolated: Path) -> None:
    write(_isolated, "strict.yaml", STRICT)
    add = write(_isolated, "add.yaml", """\
        name: add
        extends: strict
        credentials:
          gh: {daemonEnv: GB_GH_READ, env: GH_TOKEN, deliver: env}
        """)
    assert set(load(add).credentials) == {"kubeconfig", "api", "gh"}
    assert load(add).credentialOrigins["kubeconfig"].endswith("strict.yaml")
    same = write(_isolated, "same.yaml", """\
        name: same
        extends: strict
        credentials:
          kubeconfig: {file: /etc/glassbreak/credentials/readonly.kubeconfig, env: KUBECONFIG}
        """)
    assert load(same).credentialOrigins["kubeconfig"].endswith("strict.yaml")  # unchanged
    swap = write(_isolated, "swap.yaml", """\
        name: swap
        extends: strict
        credentials:
          kubeconfig: {file: /etc/glassbreak/credentials/admin.kubeconfig, env: KUBECONFIG}
        """)
    msg = error(swap)
    assert f"{swap}:4: credentials.kubeconfig: replaces the credential kubeconfig" in msg
    assert "relax: true" in msg


def test_null_must_remove_something(_isolated: Path) -> None:
    write(_isolated, "strict.yaml", STRICT)
    p = write(_isolated, "c.yaml", """\
        name: c
        extends: strict
        credentials:
          kubeconfg: null
        """)
    msg = error(p)
    assert f"{p}:4: credentials.kubeconfg: null removes an inherited credential" in msg
    assert "it has: kubeconfig, api" in msg
    root = write(_isolated, "r.yaml", "name: r\ncredentials:\n  x: null\n")
    assert f"{root}:3: credentials.x: null removes" in error(root)


def test_two_credentials_cannot_set_one_variable(_isolated: Path) -> None:
    p = write(_isolated, "d.yaml", """\
        name: d
        credentials:
          a: {file: /etc/glassbreak/credentials/a, env: KUBECONFIG}
          b: {file: /etc/glassbreak/credentials/b, env: KUBECONFIG}
        """)
    assert f"{p}:2: credentials: " in error(p) and "both set KUBECONFIG" in error(p)
    write(_isolated, "strict.yaml", STRICT)
    m = write(_isolated, "m.yaml", """\
        name: m
        extends: strict
        credentials:
          other: {file: /etc/glassbreak/credentials/o, env: API_TOKEN}
        """)
    assert f"{m}:3: credentials: credentials api and other both set API_TOKEN" in error(m)
    f = write(_isolated, "f.yaml", """\
        name: f
        credentials:
          a: {file: /x/a, env: A, fileName: same}
          b: {file: /x/b, env: B, fileName: same}
        """)
    assert "both write the file same" in error(f)


@pytest.mark.parametrize("body,line,problem", [
    ("k: {env: KUBECONFIG}", 3, "exactly one source: file, daemonEnv or mint"),
    ("k: {file: /a, mint: x, env: K}", 3, "exactly one source: file, daemonEnv or mint "
     "(got file, mint)"),
    ("k: {file: relative/path, env: K}", 3, "a credential source is an absolute path"),
    ("k: {mint: 'vault token create -ttl {tll}', env: K}", 3, "unknown placeholder {tll}"),
    ("k: {mint: 'x \"unclosed', env: K}", 3, "cannot split the mint command like a shell"),
    ("k: {mint: '', env: K}", 3, "an empty mint command"),
    ("k: {file: /a, env: LD_PRELOAD}", 3, "LD_PRELOAD cannot carry a credential"),
    ("k: {file: /a, env: PATH}", 3, "PATH cannot carry a credential"),
    ("k: {file: /a, env: 'A-B'}", 3, "is not an environment variable name"),
    ("k: {file: /a, env: K, timeout: 5s}", 3, "timeout is for mint commands only"),
    ("k: {mint: x, env: K, timeout: 10m}", 3, "longer than 5m"),
    ("k: {file: /a, env: K, template: 'no placeholder'}", 3, "template has no {token}"),
    ("k: {file: /a, env: K, deliver: env, fileName: f}", 3, "fileName is for deliver: file"),
    ("k: {file: /a, env: K, fileName: ../x}", 3, "is not a plain file name"),
    ("k: {file: /a, env: K, deliver: pipe}", 3, "'file' or 'env'"),
    ("k: {file: /a, env: K, mintt: x}", 3, "unknown field 'mintt'"),
    ("'bad name': {file: /a, env: K}", 3, "String should match pattern"),
])
def test_strict_validation_names_file_and_line(tmp_path: Path, body: str, line: int,
                                               problem: str) -> None:
    p = write(tmp_path, "v.yaml", f"name: v\ncredentials:\n  {body}\n")
    msg = error(p)
    assert f"{p}:{line}: credentials." in msg, msg
    assert problem in msg, msg


def test_unknown_field_suggests(tmp_path: Path) -> None:
    p = write(tmp_path, "s.yaml", "name: s\ncredentials:\n  k: {file: /a, env: K, templat: x}\n")
    assert "did you mean template?" in error(p)


def test_mint_argv_and_placeholders() -> None:
    from sandbox.run.credentials import mint_command, mint_ttl

    c = Credential(mint="aws sts assume-role --role-arn 'arn:aws:iam::1:role/x y' "
                        "--duration-seconds {ttl_s} --role-session-name gb-{agent}-{grant_id}",
                   env="AWS_CREDS")
    argv = mint_command(c, ttl_s=899, agent="bot-1", grant_id="gr-1")
    assert argv == ["aws", "sts", "assume-role", "--role-arn", "arn:aws:iam::1:role/x y",
                    "--duration-seconds", "899", "--role-session-name", "gb-bot-1-gr-1"]
    lst = Credential(mint=["vault", "token", "create", "-ttl", "{ttl}", "-field=token"],
                     env="VAULT_TOKEN", deliver="env")
    assert mint_command(lst, ttl_s=60, agent=None, grant_id="g")[4] == "60s"

    class G:
        expires_at = 1000.9

    assert mint_ttl(G(), now=100.0) == 900  # whole seconds, rounded down: never past the end


def test_profile_schema_documents_credentials() -> None:
    schema = loader.profile_schema()
    assert "credentials" in schema["properties"]
    assert "Credential" in schema["$defs"]


# ------------------------------------------------------------------------------ the mask


TOKEN = "opsTok-3fA9c2E71b0d4e5f6a7b8c9d"
KUBECONFIG = f"""apiVersion: v1
clusters:
- cluster: {{server: "https://10.0.0.1:6443", certificate-authority-data: LS0tLS1CRUdJTiBDRVJU}}
  name: prod-cluster
users:
- name: ops
  user: {{token: {TOKEN}}}
"""


def test_fragments_of_a_kubeconfig() -> None:
    frags = fragments(KUBECONFIG)
    assert KUBECONFIG.strip() in frags and TOKEN in frags
    assert "LS0tLS1CRUdJTiBDRVJU" in frags  # long, mixed: masked too (harmless)
    for plain in ("certificate-authority-data", "apiVersion", "prod-cluster", "//10.0.0.1"):
        assert plain not in frags


def test_mask_events_env_and_nested_context() -> None:
    from sandbox.events import ExecBlocked, ExecObserved

    m = SecretMask()
    assert not m
    m.add("kubeconfig", TOKEN)
    m.add("kubeconfig", KUBECONFIG, env="KUBECONFIG")
    m.hidden.add("GB_OPS_SOURCE")
    ev = ExecObserved(pid=1, binary="/usr/bin/curl", decision="allow", layer="exec-trace",
                      rule_id="r", argv=["curl", "-H", f"Authorization: Bearer {TOKEN}"])
    m.event(ev)
    assert ev.argv[2] == "Authorization: Bearer [credential kubeconfig]"
    assert TOKEN not in ev.model_dump_json()
    blk = ExecBlocked(layer="exec-gate", verdict="block", rule_id="r", profile="p",
                      reason=f"`{TOKEN}` is not allowed", argv=["x", TOKEN + "suffix"])
    m.event(blk)
    assert TOKEN not in blk.model_dump_json() and "[credential kubeconfig]suffix" in blk.argv[1]
    env = m.env({"PATH": "/bin", "COPY": f"x{TOKEN}", "GB_OPS_SOURCE": "s3cr3t-source-value",
                 "KUBECONFIG": "/home/agent/.kube/config"})
    assert env == {"PATH": "/bin", "COPY": "x[credential kubeconfig]",
                   "KUBECONFIG": "[credential kubeconfig]"}
    ctx = [{"pid": 3, "argv": ["sh", "-c", f"echo {TOKEN}"]}, {"pid": 4, "argv": ["ls"]}]
    out = m.scrub(ctx)
    assert out[0]["argv"][2] == "echo [credential kubeconfig]" and out[1] is ctx[1]
    untouched = ["ls", "-l"]
    assert m.scrub(untouched) is untouched


def test_the_docs_examples_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every profile in docs/credentials.md is valid (with the shipped profiles it extends)."""
    import re

    from sandbox.paths import shipped_profiles_dir

    doc = (Path(__file__).resolve().parents[2] / "docs" / "credentials.md").read_text()
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", doc, re.S)
              if b.lstrip().startswith(("# /etc/glassbreak/profiles/", "name:"))]
    lib = tmp_path / "docs"
    lib.mkdir()
    names = []
    for b in blocks:
        name = re.search(r"^name: (\S+)", b, re.M)
        if name and "credentials:" in b:
            (lib / f"{name.group(1)}.yaml").write_text(b)
            names.append(name.group(1))
    assert {"k8s-agents", "k8s-agents-ops", "deploy-agents", "deploy-agents-ops"} <= set(names)
    monkeypatch.setenv("GLASSBREAK_PROFILE_PATH", f"{lib}:{shipped_profiles_dir()}")
    loader._CACHE.clear()
    for n in names:
        p = loader.load_profile(n)  # examples checked too
        assert p.credentials, n
    ops = loader.load_profile("k8s-agents-ops")
    assert ops.credentials["kubeconfig"].source == "mint"
    assert loader.load_profile("k8s-agents").escalation.relaxedProfile == "k8s-agents-ops"
