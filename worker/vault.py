"""AES-256-GCM keyring for the Admin API keys we store: encrypt/decrypt with AAD, key ids, rotation.

A ciphertext is a `Sealed(key_id, blob)` where `blob = nonce (12 bytes) || ciphertext || tag (16 bytes)`
and `key_id` names the master key that sealed it, so a keyring holding the current key and any
previous ones can open old rows and reseal them under the current key.

Exceptions (every message is one line, safe to show, and never contains key material or plaintext):

    VaultError
    ├── InvalidMasterKey    a master key (text, file) is malformed, missing or unreadable
    ├── KeyFilePathRefused  a new key file's path exists already or its directory does not
    ├── UnknownKeyId        sealed by a master key this keyring does not hold
    └── DecryptionFailed    tampered or truncated ciphertext, wrong AAD (moved row) or wrong master key
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "DecryptionFailed",
    "InvalidMasterKey",
    "KeyFilePathRefused",
    "Keyring",
    "MasterKey",
    "Sealed",
    "UnknownKeyId",
    "VaultError",
    "integration_aad",
    "read_master_key_file",
    "write_master_key_file",
]

log = logging.getLogger(__name__)

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
PREVIOUS_KEYS_SETTING = "COST_WORKER_PREVIOUS_MASTER_KEYS"

# Changing either prefix changes every key id or every AAD, orphaning all stored ciphertexts.
_KEY_ID_PREFIX = b"cost-worker/master-key-id/v1\x00"
_INTEGRATION_AAD_PREFIX = b"cost-worker/integration/v1/"

_UNPADDED_LEN = 43  # len(urlsafe_b64encode(32 bytes).rstrip(b"="))
_URLSAFE_B64 = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_EXPECTED = (
    f"expected urlsafe base64 of {KEY_BYTES} random bytes "
    f"({_UNPADDED_LEN} characters, or 44 with '=' padding)"
)


class VaultError(Exception):
    """Base of the vault's errors; the message is one line and safe to show."""


class InvalidMasterKey(VaultError):
    """A master key is malformed, missing or unreadable; the message names where it came from."""


class KeyFilePathRefused(VaultError):
    """A new master key file would overwrite a file, or its directory does not exist (never created for
    it: a mistyped path would silently put the key somewhere nobody backs up)."""


class UnknownKeyId(VaultError):
    """The ciphertext was sealed by a master key this keyring does not hold."""


class DecryptionFailed(VaultError):
    """The ciphertext was tampered with or truncated, moved to another row, or the master key is wrong."""


class MasterKey:
    """32 random bytes. repr/str show only the one-way `id`, never the bytes."""

    __slots__ = ("_id", "_key")

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, (bytes, bytearray)):
            raise TypeError("a master key is built from bytes")
        if len(key) != KEY_BYTES:
            raise InvalidMasterKey(f"a master key must be {KEY_BYTES} bytes, got {len(key)}")
        self._key = bytes(key)
        self._id = hashlib.sha256(_KEY_ID_PREFIX + self._key).hexdigest()[:16]

    @classmethod
    def generate(cls) -> MasterKey:
        """A fresh key from the OS CSPRNG."""
        return cls(os.urandom(KEY_BYTES))

    @classmethod
    def from_text(cls, text: str, *, source: str) -> MasterKey:
        """Parse urlsafe base64 (padding optional, surrounding whitespace ignored); errors name `source`."""
        stripped = text.strip()
        if not stripped:
            raise InvalidMasterKey(f"{source} is empty: {_EXPECTED}")
        if not stripped.isascii() or not _URLSAFE_B64.fullmatch(stripped):
            # Only name the kind of problem: echoing a character would leak part of the key.
            if any(c.isspace() for c in stripped):
                raise _invalid(source, "it contains whitespace inside the key")
            if stripped.isascii() and any(c in "+/" for c in stripped):
                raise _invalid(source, "it uses standard base64 ('+' or '/'), not urlsafe ('-' and '_')")
            raise _invalid(source, "it contains characters outside urlsafe base64 (A-Z a-z 0-9 - _ and '=')")
        unpadded = stripped.rstrip("=")
        try:
            if len(unpadded) % 4 == 1:
                raise ValueError("no base64 text has this length")
            raw = base64.urlsafe_b64decode(unpadded + "=" * (-len(unpadded) % 4))
        except (binascii.Error, ValueError):
            raise _invalid(source, "it is not decodable base64") from None
        if len(raw) != KEY_BYTES:
            raise _invalid(source, f"it decodes to {len(raw)} bytes")
        if base64.urlsafe_b64encode(raw).decode().rstrip("=") != unpadded:
            # Non-zero spare bits: two different texts would name the same key, which hides copy errors.
            raise _invalid(source, "its last character is not canonical")
        if stripped != unpadded and len(stripped) != len(unpadded) + (-len(unpadded) % 4):
            raise _invalid(source, "it has the wrong amount of '=' padding")
        return cls(raw)

    def to_text(self) -> str:
        """Padded urlsafe base64, the form written to a key file."""
        return base64.urlsafe_b64encode(self._key).decode("ascii")

    @property
    def id(self) -> str:
        """A stable one-way identifier (16 hex), the same for the same key in every process."""
        return self._id

    def _raw(self) -> bytes:
        return self._key

    def __repr__(self) -> str:
        return f"MasterKey(id={self._id!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MasterKey) and hmac.compare_digest(self._key, other._key)

    def __hash__(self) -> int:
        return hash(self._id)

    def __reduce__(self) -> NoReturn:  # pickles end up in caches, queues and core dumps
        raise TypeError("MasterKey cannot be pickled")


def _invalid(source: str, problem: str) -> InvalidMasterKey:
    return InvalidMasterKey(f"{source} is not a valid master key: {problem}; {_EXPECTED}")


def read_master_key_file(path: Path) -> MasterKey:
    """Read a key written by `write_master_key_file`; any failure is an `InvalidMasterKey` naming the path."""
    try:
        data = path.read_bytes()
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise InvalidMasterKey(f"master key file {path} does not exist") from None
    except OSError as exc:
        raise InvalidMasterKey(f"cannot read master key file {path}: {_reason(exc)}") from None
    if mode & 0o077:
        # Used anyway (a mounted secret may be fixed elsewhere), but whoever can read it can open every key.
        log.warning("master key file %s has mode %04o: group or others can read or write it; "
                    "make it owner-only (chmod 600, or defaultMode: 0400 for a mounted secret)", path, mode)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise _invalid(f"master key file {path}", "it is not ASCII text") from None
    return MasterKey.from_text(text, source=f"master key file {path}")


def write_master_key_file(path: Path, key: MasterKey) -> None:
    """Write `key` to a new file, 0600 from creation; never overwrites (that would lose the old key) and
    never creates its directory."""
    if not path.parent.is_dir():
        raise KeyFilePathRefused(f"cannot create master key file {path}: directory {path.parent} does not exist")
    # O_EXCL also refuses a (dangling) symlink, so the key cannot be redirected to another file.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise KeyFilePathRefused(f"master key file {path} already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise VaultError(f"cannot create master key file {path}: {_reason(exc)}") from None
    try:
        os.fchmod(fd, 0o600)  # the umask may have removed the owner's write bit; never adds group/other
        data = (key.to_text() + "\n").encode("ascii")
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        path.unlink(missing_ok=True)  # a half-written key file would be refused on retry and unreadable later
        raise VaultError(f"cannot write master key file {path}: {_reason(exc)}") from None
    os.close(fd)
    _fsync_dir(path.parent)


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _fsync_dir(directory: Path) -> None:
    # Losing the key file's directory entry after a crash loses every secret sealed under it.
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


@dataclass(frozen=True, slots=True, repr=False)
class Sealed:
    """A ciphertext and the id of the master key that sealed it; `blob` is nonce || ciphertext || tag."""

    key_id: str
    blob: bytes

    def __repr__(self) -> str:
        return f"Sealed(key_id={self.key_id!r}, blob=<{len(self.blob)} bytes>)"


class Keyring:
    """The current master key (seals) and previous ones (only open, until their rows are resealed)."""

    __slots__ = ("_aeads", "_current_id", "_previous_ids")

    def __init__(self, current: MasterKey, previous: Sequence[MasterKey] = ()) -> None:
        self._current_id = current.id
        self._aeads: dict[str, AESGCM] = {current.id: AESGCM(current._raw())}
        self._previous_ids: list[str] = []
        for key in previous:
            if key.id not in self._aeads:  # the same key listed twice is harmless
                self._aeads[key.id] = AESGCM(key._raw())
                self._previous_ids.append(key.id)

    @property
    def current_id(self) -> str:
        return self._current_id

    def seal(self, plaintext: bytes, *, aad: bytes) -> Sealed:
        """Encrypt under the current key with a fresh random nonce; `aad` binds the result to its row."""
        nonce = os.urandom(NONCE_BYTES)
        return Sealed(self._current_id, nonce + self._aeads[self._current_id].encrypt(nonce, plaintext, aad))

    def open(self, sealed: Sealed, *, aad: bytes, context: str) -> bytes:
        """Decrypt with whichever held key sealed it; errors name `context` and what to do."""
        aead = self._aeads.get(sealed.key_id)
        if aead is None:
            held = ", ".join(self._aeads)
            raise UnknownKeyId(
                f"cannot decrypt the secret of {context}: it was sealed by master key {sealed.key_id[:64]!r} "
                f"but this worker holds only {held}; the master key that encrypted it is not configured; "
                f"supply it via {PREVIOUS_KEYS_SETTING}"
            )
        if len(sealed.blob) < NONCE_BYTES + TAG_BYTES:
            raise DecryptionFailed(
                f"cannot decrypt the secret of {context}: the ciphertext is truncated "
                f"({len(sealed.blob)} bytes); the stored value was damaged"
            )
        try:
            return aead.decrypt(sealed.blob[:NONCE_BYTES], sealed.blob[NONCE_BYTES:], aad)
        except InvalidTag:
            raise DecryptionFailed(
                f"cannot decrypt the secret of {context}: the ciphertext was modified, moved to another row, "
                "or the master key is wrong"
            ) from None

    def needs_rotation(self, sealed_key_id: str) -> bool:
        """True when a ciphertext was not sealed under the current key."""
        return sealed_key_id != self._current_id

    def reseal(self, sealed: Sealed, *, aad: bytes, context: str) -> Sealed:
        """Open with whichever key sealed it and seal again under the current key (fresh nonce)."""
        return self.seal(self.open(sealed, aad=aad, context=context), aad=aad)

    def __repr__(self) -> str:
        return f"Keyring(current={self._current_id!r}, previous={self._previous_ids!r})"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("Keyring cannot be pickled")


def integration_aad(integration_id: int) -> bytes:
    """The AAD binding a ciphertext to its integrations row, so a blob copied to another row won't open."""
    if isinstance(integration_id, bool) or not isinstance(integration_id, int):
        raise TypeError("integration_aad takes an integer row id")
    return _INTEGRATION_AAD_PREFIX + str(integration_id).encode("ascii")
