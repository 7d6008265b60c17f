"""Grants are signed (Ed25519) by the service that decided them; runners honour only a grant
whose signature verifies with their public key. A writer to the store (Redis on the network,
a copied or edited state.db) can then delete or narrow grants, never mint or widen one.

Signed: id, escalation id, agent, profile, scope, relaxed profile, the exact command (argv,
cwd, binary sha256, cmd_key), one-shot flag, approver, issue time, expiry, on-expiry, for a
path grant (a filesystem denial approved) its path and access, and for a destination grant (a
network block approved) its destination. Not signed (store state that can
only narrow a grant): revoked_*, consumed_at, the reason text.

Keys (sandbox.config `grantSigning:`): privateKeyFile (deciders only: root 0600) and
publicKeyFile (runners). Unset: /etc/glassbreak/grant-signing.key if it exists, else a keypair
generated in the state dir on first use (grant-signing.key 0600 + grant-signing.pub): the
embedded, single-host default. `cryptography` is imported only here, and only when a grant is
signed or a candidate grant is checked: never on an allowed run without grants.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.errors import GlassbreakError

SIGNED_FIELDS = ("id", "escalation_id", "agent", "profile", "scope", "relaxed_profile", "argv",
                 "cwd", "binary_sha256", "cmd_key", "one_shot", "approver", "created_at",
                 "expires_at", "on_expiry")
DOMAIN = b"glassbreak-grant-v1\n"
KEY_NAME = "grant-signing.key"


# signed when set (so grants without them keep the signatures they were issued with)
SIGNED_IF_SET = ("fs_path", "fs_access", "destination")


def payload(grant: Any) -> bytes:
    """The exact bytes that are signed: a domain tag + canonical JSON of SIGNED_FIELDS (and of
    SIGNED_IF_SET where set: adding or removing one breaks the signature)."""
    data = {f: getattr(grant, f) for f in SIGNED_FIELDS}
    data.update({f: v for f in SIGNED_IF_SET if (v := getattr(grant, f, None)) is not None})
    return DOMAIN + json.dumps(data, sort_keys=True, separators=(",", ":"),
                               ensure_ascii=True).encode()


def key_id(public: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass
class Verifier:
    public: Any
    key_id: str
    source: str
    # signature -> the exact payload it verified: a daemon re-checks a grant it has seen by
    # comparing bytes (~10 µs) instead of verifying again (~130-300 µs here)
    _seen: dict[str, bytes] = field(default_factory=dict, repr=False)

    def why_invalid(self, grant: Any) -> str | None:
        """None when the grant's signature verifies; else why not (for the audit log)."""
        sig = getattr(grant, "signature", None)
        if not sig:
            return "it is unsigned: no glassbreak decider issued it"
        data = payload(grant)
        if self._seen.get(sig) == data:
            return None
        from cryptography.exceptions import InvalidSignature

        try:
            self.public.verify(bytes.fromhex(sig), data)
        except (InvalidSignature, ValueError):
            other = getattr(grant, "key_id", None)
            if other and other != self.key_id:
                return (f"its signature is by key {other}, not this runner's grant key "
                        f"{self.key_id} ({self.source})")
            return "its signature does not verify: forged, or edited after it was signed"
        if len(self._seen) >= 4096:
            self._seen.clear()
        self._seen[sig] = data
        return None


@dataclass
class Signer:
    private: Any
    key_id: str
    source: str

    def sign(self, grant: Any) -> Any:
        """The grant with key_id and signature set (signature over payload(grant))."""
        g = grant.model_copy(update={"key_id": self.key_id})
        return g.model_copy(update={"signature": self.private.sign(payload(g)).hex()})

    def verifier(self) -> Verifier:
        return Verifier(self.private.public_key(), self.key_id, self.source)


def _read_private(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from sandbox.config import require_trusted

    require_trusted(path, "grant signing key", secret=True)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as e:
        raise GlassbreakError(f"cannot read the grant signing key {path}: {e.strerror}",
                              hint="decisions need the private key (root 0600); runners "
                              "only the public one (grantSigning.publicKeyFile)") from None
    except ValueError as e:
        raise GlassbreakError(f"the grant signing key {path} is not a PEM private key: {e}",
                              hint="openssl genpkey -algorithm ed25519 -out " + str(path)
                              ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise GlassbreakError(f"the grant signing key {path} is not an Ed25519 key",
                              hint="openssl genpkey -algorithm ed25519 -out " + str(path))
    return key


def _read_public(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from sandbox.config import require_trusted

    require_trusted(path, "grant public key")
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as e:
        raise GlassbreakError(f"cannot read the grant public key {path}: {e.strerror}",
                              hint="copy the deciding host's grant-signing.pub here") from None
    except ValueError as e:
        raise GlassbreakError(f"the grant public key {path} is not a PEM public key: {e}",
                              hint="openssl pkey -in grant-signing.key -pubout") from None
    if not isinstance(key, Ed25519PublicKey):
        raise GlassbreakError(f"the grant public key {path} is not an Ed25519 key")
    return key


def _generate(path: Path) -> None:
    """A new keypair at path (0600) and path.pub; a concurrent generator's key wins."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # never replaces a key another process made first
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    pub = _read_private(path).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    pub_path = path.with_suffix(".pub")
    if not pub_path.exists():
        tmp_pub = pub_path.with_name(f".{pub_path.name}.{os.getpid()}.tmp")
        tmp_pub.write_bytes(pub)
        os.chmod(tmp_pub, 0o644)
        os.replace(tmp_pub, pub_path)


def _private_path(cfg: Any, generate: bool) -> Path | None:
    conf = cfg.grantSigning.privateKeyFile
    if conf:
        return Path(conf)
    from sandbox.config import SYSTEM_SIGNING_KEY

    if SYSTEM_SIGNING_KEY.exists():
        return SYSTEM_SIGNING_KEY
    if cfg.grantSigning.publicKeyFile:
        return None  # a runner host: the operator gave it only the public key
    from sandbox.paths import state_dir

    p = state_dir() / KEY_NAME
    if not p.exists() and generate:
        _generate(p)
    return p if p.exists() else None


def load_signer(cfg: Any) -> Signer | None:
    """The decider's key, or None on a host that holds only the public key."""
    p = _private_path(cfg, generate=True)
    if p is None:
        return None
    if not os.access(p, os.R_OK):
        return None
    key = _read_private(p)
    return Signer(key, key_id(key.public_key()), str(p))


def load_verifier(cfg: Any) -> Verifier:
    """The runner's public key: grantSigning.publicKeyFile, else the public half of the
    private key above (the embedded keypair is generated on first use)."""
    conf = cfg.grantSigning.publicKeyFile
    if conf:
        key = _read_public(Path(conf))
        return Verifier(key, key_id(key), conf)
    signer = load_signer(cfg)
    if signer is None:
        raise GlassbreakError("no grant public key: grantSigning.publicKeyFile is not set and "
                              "the private key is not readable here",
                              hint="set grantSigning.publicKeyFile in the glassbreak config "
                              "(docs/identity.md)")
    return signer.verifier()
