"""Loading atlases from a directory, a JSON file, a dict or an HTTP(S) URL."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import urljoin

from pydantic import ValidationError

from cra_agents._canonical import canonical_json
from cra_agents._exceptions import AtlasError, TraceError
from cra_agents._safejson import JSONInputError, loads_strict
from cra_agents.atlas._model import Atlas

if TYPE_CHECKING:
    # At run time the Atlas models are imported where an atlas is read: building them is most
    # of what ``import cra_agents`` would otherwise cost (cra_agents.protocol loads them lazily).
    from cra_agents.protocol import AtlasManifest

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_CONTEXT_BYTES",
    "AtlasSource",
    "json_pointer",
    "load_atlas",
    "read_context_file",
    "read_document",
]

#: Largest manifest (and largest single context file) accepted, in bytes.
DEFAULT_MAX_BYTES = 4 * 1024 * 1024
#: Largest total of context files read for one atlas, in bytes.
MAX_CONTEXT_BYTES = 16 * 1024 * 1024
DEFAULT_TIMEOUT = 10.0

AtlasSource: TypeAlias = "Atlas | AtlasManifest | Mapping[str, Any] | str | os.PathLike[str]"


def json_pointer(loc: Iterable[int | str]) -> str:
    """A location (pydantic's error ``loc``, jsonschema's ``absolute_path``) as a JSON pointer.

    RFC 6901: each part is prefixed with ``/``; ``~`` and ``/`` inside a part are escaped.

    Example:
        >>> json_pointer(("policies", 0, "a/b"))
        '/policies/0/a~1b'
    """
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in loc)


def _is_url(source: object) -> bool:
    return isinstance(source, str) and source.startswith(("http://", "https://"))


def _parse(data: bytes, *, label: str, max_bytes: int) -> dict[str, Any]:
    try:
        value = loads_strict(data, max_bytes=max_bytes)
    except JSONInputError as exc:
        raise AtlasError(str(exc), reason=exc.reason, path=exc.path, source=label) from exc
    if not isinstance(value, dict):
        raise AtlasError(
            f"an atlas is a JSON object, not {type(value).__name__}",
            reason="not_an_object",
            source=label,
        )
    return value


def _check_pin(expected: str, actual_hex: str, label: str) -> None:
    wanted = expected.removeprefix("sha256:").lower()
    if not hmac.compare_digest(wanted, actual_hex):
        raise AtlasError(
            f"content digest sha256:{actual_hex} does not match the pinned sha256:{wanted}",
            reason="digest_mismatch",
            source=label,
        )


def read_document(
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    sha256: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[dict[str, Any], str, Path | None]:
    """Read the raw manifest document: ``(document, source label, base directory)``.

    Raises:
        AtlasError: unreadable, refused, or the digest pin does not match.
    """
    return _read_document(source, sha256=sha256, max_bytes=max_bytes, timeout=timeout)


def _read_document(
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    sha256: str | None,
    max_bytes: int,
    timeout: float,
    deadline: float | None = None,
) -> tuple[dict[str, Any], str, Path | None]:
    if isinstance(source, Mapping):
        document = dict(source)
        if sha256 is not None:
            try:
                actual = hashlib.sha256(canonical_json(document)).hexdigest()
            except TraceError as exc:
                raise AtlasError(str(exc), reason="invalid_json", source="<dict>") from exc
            _check_pin(sha256, actual, "<dict>")
        return document, "<dict>", None
    if _is_url(source):
        from cra_agents.atlas._fetch import fetch_bytes

        url = str(source)
        data = fetch_bytes(url, max_bytes=max_bytes, timeout=timeout, deadline=deadline)
        if sha256 is not None:
            _check_pin(sha256, hashlib.sha256(data).hexdigest(), url)
        return _parse(data, label=url, max_bytes=max_bytes), url, None
    path = Path(source)
    label = str(path)
    if path.is_dir():
        base = path
        path = path / "atlas.json"
        if not path.is_file():
            raise AtlasError(
                "directory has no atlas.json",
                reason="not_found",
                source=label,
                code="ATLAS_LOAD_ERROR",
            )
    else:
        base = path.parent
    _require_regular(path, label, "")
    try:
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except FileNotFoundError as exc:
        raise AtlasError(
            "no such file or directory",
            reason="not_found",
            source=label,
            code="ATLAS_LOAD_ERROR",
        ) from exc
    except OSError as exc:
        raise AtlasError(
            f"cannot read: {exc.strerror}",
            reason="io_error",
            source=label,
            code="ATLAS_LOAD_ERROR",
        ) from exc
    if sha256 is not None:
        _check_pin(sha256, hashlib.sha256(data).hexdigest(), label)
    return _parse(data, label=label, max_bytes=max_bytes), label, base


def read_context_file(
    base: Path, name: str, *, where: str, source: str, max_bytes: int = DEFAULT_MAX_BYTES
) -> bytes | None:
    """Up to ``max_bytes + 1`` bytes of the context file ``name`` of the atlas directory ``base``.

    The caller compares the length with ``max_bytes``: one byte more means the file is too large.

    Args:
        base: The atlas directory.
        name: The file as the manifest names it, relative to ``base``.
        where: JSON pointer of the name in the manifest, for errors.
        source: Where the atlas came from, for errors.
        max_bytes: The largest size accepted.

    Returns:
        The bytes read, or ``None`` when the file does not exist.

    Raises:
        AtlasError: ``path_escape`` (absolute, or outside ``base``), ``not_a_file`` (a FIFO,
            device or socket) or ``io_error``.
    """
    try:
        root = base.resolve()
        target = (root / name).resolve()
    except (ValueError, OSError) as exc:  # a NUL byte (ValueError), a loop: names the OS refuses
        raise AtlasError(
            f"context file name {name!r} is not a usable file name: {exc}",
            reason="bad_name",
            path=where,
            source=source,
        ) from exc
    if Path(name).is_absolute() or not target.is_relative_to(root):
        raise AtlasError(
            f"context file {name!r} lies outside the atlas directory",
            reason="path_escape",
            path=where,
            source=source,
        )
    _require_regular(target, source, where)
    try:
        with target.open("rb") as handle:
            return handle.read(max_bytes + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AtlasError(
            f"cannot read context file {name!r}: {exc.strerror}",
            reason="io_error",
            path=where,
            source=source,
            code="ATLAS_LOAD_ERROR",
        ) from exc


def _require_regular(path: Path, label: str, where: str) -> None:
    """Refuse FIFOs, devices and sockets, which would block or never end."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return  # reported by the caller's open()
    except ValueError as exc:  # a NUL byte in the name
        raise AtlasError(
            f"not a usable file name: {exc}",
            reason="bad_name",
            path=where,
            source=label,
            code="ATLAS_LOAD_ERROR",
        ) from exc
    except OSError as exc:
        raise AtlasError(
            f"cannot read: {exc.strerror}",
            reason="io_error",
            path=where,
            source=label,
            code="ATLAS_LOAD_ERROR",
        ) from exc
    if not stat.S_ISREG(mode):
        raise AtlasError(
            f"{path.name} is not a regular file",
            reason="not_a_file",
            path=where,
            source=label,
            code="ATLAS_LOAD_ERROR",
        )


def _validate(document: Mapping[str, Any], label: str) -> AtlasManifest:
    version = document.get("atlas_version")
    if version != "1.0":
        hint = (
            "; it is the legacy 0.1 format: convert it with `cra atlas convert PATH`"
            if version == "0.1"
            else ""
        )
        raise AtlasError(
            f"atlas_version {version!r} is not supported (expected '1.0'){hint}",
            reason="unsupported_version",
            path="/atlas_version",
            source=label,
            code="ATLAS_VERSION_MISMATCH",
        )
    from cra_agents.protocol import AtlasManifest

    try:
        return AtlasManifest.model_validate(document)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        first = errors[0]
        summary = [{"path": json_pointer(e["loc"]), "message": e["msg"]} for e in errors[:20]]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise AtlasError(
            f"{first['msg']}{more}",
            reason="schema",
            path=json_pointer(first["loc"]),
            source=label,
            details={"errors": summary},
        ) from exc


def _collect_context(
    manifest: AtlasManifest,
    label: str,
    max_bytes: int,
    read: Callable[[str, str], bytes | None],
) -> tuple[dict[str, str], list[str]]:
    """Read every pack file once through ``read(name, pointer)`` (``None``: missing)."""
    files: dict[str, str] = {}
    missing: list[str] = []
    total = 0
    for p_index, pack in enumerate(manifest.context_packs):
        for f_index, name in enumerate(pack.files):
            where = f"/context_packs/{p_index}/files/{f_index}"
            if name in files or name in missing:
                continue
            data = read(name, where)
            if data is None:
                missing.append(name)
                continue
            total += len(data)
            if len(data) > max_bytes or total > MAX_CONTEXT_BYTES:
                raise AtlasError(
                    f"context file {name!r} takes the atlas over its size limit",
                    reason="too_large",
                    path=where,
                    source=label,
                )
            try:
                files[name] = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise AtlasError(
                    f"context file {name!r} is not valid UTF-8",
                    reason="invalid_encoding",
                    path=where,
                    source=label,
                ) from exc
    return files, missing


def _read_context(
    manifest: AtlasManifest, base: Path | None, label: str, max_bytes: int
) -> tuple[dict[str, str], list[str]]:
    """Context pack files of a directory atlas; files outside the directory are refused."""
    if base is None:
        names = dict.fromkeys(f for pack in manifest.context_packs for f in pack.files)
        return {}, list(names)

    def read(name: str, where: str) -> bytes | None:
        return read_context_file(base, name, where=where, source=label, max_bytes=max_bytes)

    return _collect_context(manifest, label, max_bytes, read)


def _fetch_context(
    manifest: AtlasManifest, url: str, max_bytes: int, timeout: float, deadline: float
) -> tuple[dict[str, str], list[str]]:
    """Context pack files of a URL atlas, fetched relative to the manifest's URL.

    Every file shares the manifest's ``deadline``: ``timeout`` bounds the whole load.
    """
    from cra_agents.atlas._fetch import fetch_bytes

    base = urljoin(url, ".")

    def read(name: str, where: str) -> bytes | None:
        target = urljoin(base, name)
        if ".." in name.split("/") or "://" in name or not target.startswith(base):
            raise AtlasError(
                f"context file {name!r} lies outside the atlas location",
                reason="path_escape",
                path=where,
                source=url,
            )
        try:
            return fetch_bytes(target, max_bytes=max_bytes, timeout=timeout, deadline=deadline)
        except AtlasError as exc:
            if exc.details.get("status") == 404:
                return None
            if exc.reason == "bad_url":
                raise AtlasError(
                    f"context file name {name!r} is not a usable URL path",
                    reason="bad_name",
                    path=where,
                    source=url,
                ) from exc
            raise

    return _collect_context(manifest, url, max_bytes, read)


def load_atlas(
    source: AtlasSource,
    *,
    sha256: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout: float = DEFAULT_TIMEOUT,
) -> Atlas:
    """Load an atlas leniently and completely, or not at all.

    Args:
        source: A directory holding ``atlas.json`` (and the ``context/`` files its packs name),
            a JSON file, a manifest as a dict or :class:`AtlasManifest`, an ``http(s)://`` URL,
            or an already loaded :class:`Atlas` (returned as is).
        sha256: Optional pin (hex, ``sha256:`` prefix allowed) of the exact manifest bytes read
            from the file or URL, or of the canonical JSON of a dict. Checked before parsing.
        max_bytes: Size cap of the manifest and of each context file.
        timeout: Total time budget of a URL atlas, in seconds: the manifest and every context
            file are fetched within it, however slowly a server sends.

    Returns:
        The loaded :class:`Atlas`. Real upstream atlases load: inline ``context_blocks``, a
        policy's top-level ``reason``, ``requires_approval`` and ``_`` in ids are accepted.

    Raises:
        AtlasError: with a ``code``, a ``reason`` slug and the JSON pointer ``path`` of the
            offending field. No partially loaded atlas is ever returned.

    Example:
        >>> atlas = load_atlas(cra_agents.examples.atlas_path("github-ops"))  # doctest: +SKIP
        >>> atlas.atlas_id  # doctest: +SKIP
        'com.example.github-ops'
    """
    from cra_agents.protocol import AtlasManifest

    if isinstance(source, Atlas):
        return source
    if isinstance(source, AtlasManifest):
        source = source.model_dump(mode="json", exclude_none=True)
    deadline = time.monotonic() + timeout  # one budget for the manifest and its context files
    document, label, base = _read_document(
        source, sha256=sha256, max_bytes=max_bytes, timeout=timeout, deadline=deadline
    )
    manifest = _validate(document, label)
    if base is None and _is_url(label):
        files, missing = _fetch_context(manifest, label, max_bytes, timeout, deadline)
    else:
        files, missing = _read_context(manifest, base, label, max_bytes)
    try:
        material = canonical_json({"manifest": document, "context_files": files})
    except TraceError as exc:
        raise AtlasError(str(exc), reason="invalid_json", source=label) from exc
    return Atlas(
        manifest=manifest,
        digest="sha256:" + hashlib.sha256(material).hexdigest(),
        source=label,
        base_dir=base,
        context_files=MappingProxyType(files),
        missing_files=tuple(missing),
    )
