r"""Signed checkpoints: Ed25519 statements of (log id, size, head hash, time).

A hash chain alone cannot show that its tail was cut off, or that the whole log was rolled
back to an earlier state: whoever can write the log can recompute it. A checkpoint, signed with
a key the log writer's storage does not hold and kept outside the log, fixes a prefix: a log
shorter than its latest checkpoint, or one whose event at that size has another hash, is not
valid. Events after the latest checkpoint are reported as an unverifiable tail.

Keys::

    from cra_agents.trace import generate_signing_key, save_signing_key, load_signing_key
    key = generate_signing_key()
    save_signing_key(key, "checkpoint.key", password=b"...")   # PKCS#8 PEM, 0600
    save_verify_key(key.public_key(), "checkpoint.pub")        # SubjectPublicKeyInfo PEM
    verify_key = load_verify_key("checkpoint.pub")

Keys and signatures need the ``signing`` extra (cryptography); without it, what makes, reads or
checks one raises :class:`~cra_agents.MissingDependencyError`. Checkpoint files are read and
written, and chains without checkpoints verified, without it.

The signed message is the UTF-8 text ``cra-trace-checkpoint/v1\n<log_id>\n<size>\n
<head_hash>\n<timestamp>\n`` (a signed note, as transparency logs use).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cra_agents._clock import now_timestamp, parse_timestamp_ns
from cra_agents._exceptions import MissingDependencyError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    from cra_agents.protocol import TraceEvent

__all__ = [
    "Checkpoint",
    "append_checkpoint",
    "generate_signing_key",
    "load_signing_key",
    "load_verify_key",
    "read_checkpoints",
    "save_signing_key",
    "save_verify_key",
    "sign_checkpoint",
]

_HEADER = "cra-trace-checkpoint/v1"
_CHECKPOINTS = ".checkpoints.jsonl"


def _require_signing() -> None:
    """Check that the ``signing`` extra (cryptography) is installed.

    Everything here that makes, reads or checks a key or a signature calls it first; reading
    and writing checkpoint files, and verifying chains without checkpoints, do not need it.

    Raises:
        MissingDependencyError: cryptography is not installed (the ``signing`` extra).
    """
    try:
        import cryptography  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            "signing or checking trace checkpoints", package="cryptography", extra="signing"
        ) from exc


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement that log ``log_id`` had ``size`` events ending in ``head_hash``."""

    log_id: str
    size: int
    head_hash: str
    timestamp: str
    key_id: str
    signature: str

    def message(self) -> bytes:
        """The exact bytes that are signed."""
        return (
            f"{_HEADER}\n{self.log_id}\n{self.size}\n{self.head_hash}\n{self.timestamp}\n"
        ).encode()

    def verify_signature(self, verify_key: Ed25519PublicKey) -> bool:
        """Whether the signature is valid for ``verify_key`` (and the key id matches)."""
        _require_signing()
        from cryptography.exceptions import InvalidSignature

        if self.key_id != key_id(verify_key):
            return False
        try:
            verify_key.verify(base64.b64decode(self.signature, validate=True), self.message())
        except (InvalidSignature, ValueError):
            return False
        return True

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Checkpoint:
        """Parse the JSON form.

        Raises:
            ValueError: a field is missing or of the wrong type.
        """
        try:
            checkpoint = cls(
                log_id=str(data["log_id"]),
                size=int(data["size"]),
                head_hash=str(data["head_hash"]),
                timestamp=str(data["timestamp"]),
                key_id=str(data["key_id"]),
                signature=str(data["signature"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a checkpoint: {exc}") from exc
        if checkpoint.size < 0:
            raise ValueError("a checkpoint's size cannot be negative")
        parse_timestamp_ns(checkpoint.timestamp)
        return checkpoint


def key_id(verify_key: Ed25519PublicKey) -> str:
    """A short, stable id of a public key: SHA-256 of its raw bytes, 16 hex digits."""
    _require_signing()
    from cryptography.hazmat.primitives import serialization

    raw = verify_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_signing_key() -> Ed25519PrivateKey:
    """A new Ed25519 signing key."""
    _require_signing()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
    )

    return Ed25519PrivateKey.generate()


def save_signing_key(
    key: Ed25519PrivateKey, path: str | os.PathLike[str], *, password: bytes | None = None
) -> None:
    """Write ``key`` as PKCS#8 PEM (encrypted when ``password`` is given), mode 0600."""
    _require_signing()
    from cryptography.hazmat.primitives import serialization

    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    fd = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def load_signing_key(
    path: str | os.PathLike[str], *, password: bytes | None = None
) -> Ed25519PrivateKey:
    """Read a PKCS#8 PEM Ed25519 key.

    Raises:
        ValueError: the file holds no Ed25519 private key, or the password is wrong.
    """
    _require_signing()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
    )

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=password)
    except TypeError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return key


def save_verify_key(verify_key: Ed25519PublicKey, path: str | os.PathLike[str]) -> None:
    """Write a public key as SubjectPublicKeyInfo PEM."""
    _require_signing()
    from cryptography.hazmat.primitives import serialization

    Path(path).write_bytes(
        verify_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def load_verify_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Read a SubjectPublicKeyInfo PEM Ed25519 public key.

    Raises:
        ValueError: the file holds no Ed25519 public key.
    """
    _require_signing()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PublicKey,
    )

    key = serialization.load_pem_public_key(Path(path).read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} does not hold an Ed25519 public key")
    return key


def sign_checkpoint(
    events: Sequence[TraceEvent | Mapping[str, Any]],
    signing_key: Ed25519PrivateKey,
    *,
    log_id: str | None = None,
    timestamp: str | None = None,
) -> Checkpoint:
    """Sign a checkpoint over ``events`` as they stand (verify them first).

    Args:
        events: The log, in order; its size and last hash are signed.
        signing_key: The Ed25519 key (kept away from the log's storage).
        log_id: The log's id; default: the session id of the events.
        timestamp: When; default: now.

    Raises:
        ValueError: ``events`` is empty and no ``log_id`` is given.
    """
    from cra_agents.protocol import GENESIS_HASH

    def field(event: TraceEvent | Mapping[str, Any], name: str) -> Any:
        return event[name] if isinstance(event, Mapping) else getattr(event, name)

    if log_id is None:
        if not events:
            raise ValueError("an empty log needs an explicit log_id")
        log_id = str(field(events[0], "session_id"))
    head = str(field(events[-1], "event_hash")) if events else GENESIS_HASH
    unsigned = Checkpoint(
        log_id=log_id,
        size=len(events),
        head_hash=head,
        timestamp=timestamp or now_timestamp(),
        key_id=key_id(signing_key.public_key()),
        signature="",
    )
    signature = base64.b64encode(signing_key.sign(unsigned.message())).decode("ascii")
    return Checkpoint(**{**unsigned.as_dict(), "signature": signature})


def append_checkpoint(checkpoint: Checkpoint, directory: str | os.PathLike[str]) -> Path:
    """Append ``checkpoint`` to ``<directory>/<log_id>.checkpoints.jsonl`` (fsynced)."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{checkpoint.log_id}{_CHECKPOINTS}"
    line = json.dumps(checkpoint.as_dict(), sort_keys=True) + "\n"
    with path.open("a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())
    return path


def read_checkpoints(
    directory: str | os.PathLike[str], log_id: str | None = None
) -> list[Checkpoint]:
    """The checkpoints stored for ``log_id``, oldest first (none: an empty list).

    With ``log_id`` None: every checkpoint in the directory (every ``*.checkpoints.jsonl``),
    file by file; each names its log in its signed ``log_id``, whatever its file is called.

    Raises:
        ValueError: a stored line is not a checkpoint.
    """
    if log_id is None:
        files = sorted(Path(directory).glob(f"*{_CHECKPOINTS}"))
        return [c for path in files for c in _read_file(path)]
    path = Path(directory) / f"{log_id}{_CHECKPOINTS}"
    return _read_file(path) if path.exists() else []


def _read_file(path: Path) -> list[Checkpoint]:
    out = []
    for number, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(Checkpoint.from_dict(json.loads(line)))
            except (ValueError, json.JSONDecodeError) as exc:
                raise ValueError(f"{path}:{number}: {exc}") from exc
    return out


def _as_list(checkpoints: Checkpoint | Iterable[Checkpoint] | None) -> list[Checkpoint]:
    if checkpoints is None:
        return []
    if isinstance(checkpoints, Checkpoint):
        return [checkpoints]
    return list(checkpoints)
