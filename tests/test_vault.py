"""Behaviour of worker.vault: sealing, opening, rotation, master keys and their files."""

from __future__ import annotations

import base64
import copy
import os
import pickle
import stat
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from worker.vault import (
    DecryptionFailed,
    InvalidMasterKey,
    KeyFilePathRefused,
    Keyring,
    MasterKey,
    Sealed,
    UnknownKeyId,
    VaultError,
    integration_aad,
    read_master_key_file,
    write_master_key_file,
)

FIXED_KEY_BYTES = bytes(range(32))
FIXED_KEY_ID = "0fc9d7a74520a0b5"  # pinned: a changed derivation would orphan every stored ciphertext
PLAINTEXT = b"sk-ant-admin01-Zq7TOPSECRETtopsecretQ9xv-abcdef"
CONTEXT = "integration 7 (prod)"
AAD = integration_aad(7)


def _text(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


def secret_forms(key: MasterKey) -> list[str]:
    """Every textual form in which the key bytes could leak, including a prefix of its base64."""
    raw = base64.urlsafe_b64decode(key.to_text())
    padded = key.to_text()
    return [
        padded,
        padded.rstrip("="),
        padded[:12],
        base64.b64encode(raw).decode(),
        raw.hex(),
        raw.hex()[:16],
        repr(raw),
        repr(raw)[2:14],
    ]


def assert_no_secret(text: str, key: MasterKey) -> None:
    for form in secret_forms(key):
        assert form not in text


def full_traceback(exc: BaseException) -> str:
    """The message plus every chained cause, as a log line or a crash report would show them."""
    return "".join(traceback.format_exception(exc))


@pytest.fixture
def key_a() -> MasterKey:
    return MasterKey.generate()


@pytest.fixture
def key_b() -> MasterKey:
    return MasterKey.generate()


@pytest.fixture
def ring(key_a: MasterKey) -> Keyring:
    return Keyring(key_a)


def flip(blob: bytes, index: int) -> bytes:
    out = bytearray(blob)
    out[index] ^= 0x01
    return bytes(out)


class TestSeal:
    @pytest.mark.parametrize(
        "plaintext",
        [b"", b"x", PLAINTEXT, bytes(range(256)), os.urandom(64 * 1024)],
        ids=["empty", "one-byte", "admin-key", "all-byte-values", "64KiB"],
    )
    def test_round_trip(self, ring: Keyring, plaintext: bytes) -> None:
        """What is sealed opens to the same bytes with the same AAD."""
        assert ring.open(ring.seal(plaintext, aad=AAD), aad=AAD, context=CONTEXT) == plaintext

    def test_sealed_under_current_key(self, key_a: MasterKey, key_b: MasterKey) -> None:
        """Sealing always uses the current key, never a previous one."""
        sealed = Keyring(key_b, previous=[key_a]).seal(PLAINTEXT, aad=AAD)
        assert sealed.key_id == key_b.id

    def test_blob_layout(self, ring: Keyring) -> None:
        """The blob is a 12-byte nonce, the ciphertext (same length as the plaintext) and a 16-byte tag."""
        assert len(ring.seal(PLAINTEXT, aad=AAD).blob) == 12 + len(PLAINTEXT) + 16

    def test_blob_hides_plaintext(self, ring: Keyring) -> None:
        """The plaintext does not appear in the blob."""
        assert PLAINTEXT not in ring.seal(PLAINTEXT, aad=AAD).blob

    def test_nonces_are_fresh(self, ring: Keyring) -> None:
        """Sealing the same plaintext 1000 times gives 1000 distinct nonces and blobs."""
        blobs = [ring.seal(PLAINTEXT, aad=AAD).blob for _ in range(1000)]
        assert len({blob[:12] for blob in blobs}) == 1000
        assert len(set(blobs)) == 1000

    def test_opens_standard_aes_gcm(self, ring: Keyring) -> None:
        """A blob made by plain AESGCM (nonce || ciphertext+tag, row 7's AAD) opens: the format is pinned."""
        nonce = bytes(12)
        blob = nonce + AESGCM(FIXED_KEY_BYTES).encrypt(nonce, PLAINTEXT, b"cost-worker/integration/v1/7")
        fixed = Keyring(MasterKey(FIXED_KEY_BYTES))
        assert fixed.open(Sealed(FIXED_KEY_ID, blob), aad=AAD, context=CONTEXT) == PLAINTEXT

    def test_seal_is_standard_aes_gcm(self) -> None:
        """What seal produces decrypts with plain AESGCM under the key bytes, nonce first."""
        sealed = Keyring(MasterKey(FIXED_KEY_BYTES)).seal(PLAINTEXT, aad=AAD)
        assert AESGCM(FIXED_KEY_BYTES).decrypt(sealed.blob[:12], sealed.blob[12:], AAD) == PLAINTEXT


class TestOpenFailures:
    @pytest.mark.parametrize(
        "position",
        [0, 11, 12, 12 + len(PLAINTEXT) // 2, 12 + len(PLAINTEXT) - 1, -16, -8, -1],
        ids=[
            "nonce-first",
            "nonce-last",
            "ciphertext-first",
            "ciphertext-middle",
            "ciphertext-last",
            "tag-first",
            "tag-middle",
            "tag-last",
        ],
    )
    def test_tampered_byte_fails(self, ring: Keyring, position: int) -> None:
        """Flipping a bit anywhere in nonce, ciphertext or tag is DecryptionFailed naming the context."""
        sealed = ring.seal(PLAINTEXT, aad=AAD)
        tampered = Sealed(sealed.key_id, flip(sealed.blob, position))
        with pytest.raises(DecryptionFailed) as info:
            ring.open(tampered, aad=AAD, context=CONTEXT)
        assert CONTEXT in str(info.value)
        assert "modified, moved to another row, or the master key is wrong" in str(info.value)

    @pytest.mark.parametrize("length", [0, 1, 12, 27], ids=["empty", "one", "nonce-only", "one-short-of-tag"])
    def test_truncated_blob_fails(self, ring: Keyring, length: int) -> None:
        """A blob too short to hold nonce and tag is DecryptionFailed naming the context, not a crash."""
        sealed = ring.seal(b"", aad=AAD)
        with pytest.raises(DecryptionFailed, match="integration 7"):
            ring.open(Sealed(sealed.key_id, sealed.blob[:length]), aad=AAD, context=CONTEXT)

    def test_appended_byte_fails(self, ring: Keyring) -> None:
        """Extra bytes after the tag are tampering."""
        sealed = ring.seal(PLAINTEXT, aad=AAD)
        with pytest.raises(DecryptionFailed):
            ring.open(Sealed(sealed.key_id, sealed.blob + b"\x00"), aad=AAD, context=CONTEXT)

    def test_aad_swap_fails(self, ring: Keyring) -> None:
        """A ciphertext sealed for integration 1 does not open as integration 2 (moved row)."""
        sealed = ring.seal(PLAINTEXT, aad=integration_aad(1))
        with pytest.raises(DecryptionFailed, match="integration 2"):
            ring.open(sealed, aad=integration_aad(2), context="integration 2")

    def test_unknown_key_id(self, key_a: MasterKey, key_b: MasterKey) -> None:
        """A blob sealed by A, opened by a keyring holding only B, is UnknownKeyId naming context and fix."""
        sealed = Keyring(key_a).seal(PLAINTEXT, aad=AAD)
        with pytest.raises(UnknownKeyId) as info:
            Keyring(key_b).open(sealed, aad=AAD, context=CONTEXT)
        message = str(info.value)
        assert CONTEXT in message
        assert key_a.id in message
        assert "COST_WORKER_PREVIOUS_MASTER_KEYS" in message

    def test_spoofed_key_id_fails(self, key_a: MasterKey, key_b: MasterKey) -> None:
        """A blob sealed by A but labelled with B's id is DecryptionFailed (wrong master key), not garbage."""
        sealed = Keyring(key_a).seal(PLAINTEXT, aad=AAD)
        with pytest.raises(DecryptionFailed, match="master key is wrong"):
            Keyring(key_b).open(Sealed(key_b.id, sealed.blob), aad=AAD, context=CONTEXT)

    def test_errors_are_vault_errors(self) -> None:
        """Every vault error is caught by `except VaultError`."""
        for cls in (UnknownKeyId, DecryptionFailed, InvalidMasterKey):
            assert issubclass(cls, VaultError)


class TestRotation:
    def test_previous_key_opens(self, key_a: MasterKey, key_b: MasterKey) -> None:
        """A keyring with current B and previous A opens what A sealed."""
        sealed = Keyring(key_a).seal(PLAINTEXT, aad=AAD)
        assert Keyring(key_b, previous=[key_a]).open(sealed, aad=AAD, context=CONTEXT) == PLAINTEXT

    def test_reseal_moves_to_current(self, key_a: MasterKey, key_b: MasterKey) -> None:
        """Resealing an A ciphertext gives one under B that a keyring holding only B opens."""
        old = Keyring(key_a).seal(PLAINTEXT, aad=AAD)
        rotating = Keyring(key_b, previous=[key_a])
        assert rotating.needs_rotation(old.key_id)
        new = rotating.reseal(old, aad=AAD, context=CONTEXT)
        assert new.key_id == key_b.id
        assert not rotating.needs_rotation(new.key_id)
        assert Keyring(key_b).open(new, aad=AAD, context=CONTEXT) == PLAINTEXT

    def test_reseal_keeps_aad_binding(self, key_a: MasterKey, key_b: MasterKey) -> None:
        """A resealed ciphertext is still bound to its row."""
        rotating = Keyring(key_b, previous=[key_a])
        new = rotating.reseal(Keyring(key_a).seal(PLAINTEXT, aad=AAD), aad=AAD, context=CONTEXT)
        with pytest.raises(DecryptionFailed):
            rotating.open(new, aad=integration_aad(8), context="integration 8")

    def test_reseal_of_tampered_fails(self, key_a: MasterKey, key_b: MasterKey) -> None:
        """Resealing verifies first: a tampered ciphertext is not laundered into a valid one."""
        old = Keyring(key_a).seal(PLAINTEXT, aad=AAD)
        with pytest.raises(DecryptionFailed, match="integration 7"):
            rotating = Keyring(key_b, previous=[key_a])
            rotating.reseal(Sealed(old.key_id, flip(old.blob, 20)), aad=AAD, context=CONTEXT)

    @pytest.mark.parametrize(
        ("sealed_by", "expected"),
        [("current", False), ("previous", True), ("unknown", True)],
    )
    def test_needs_rotation(self, key_a: MasterKey, key_b: MasterKey, sealed_by: str, expected: bool) -> None:
        """Only ciphertexts under the current key need no rotation."""
        ids = {"current": key_b.id, "previous": key_a.id, "unknown": MasterKey.generate().id}
        assert Keyring(key_b, previous=[key_a]).needs_rotation(ids[sealed_by]) is expected

    def test_current_listed_as_previous(self, key_a: MasterKey) -> None:
        """Listing the current key among the previous ones is harmless."""
        ring = Keyring(key_a, previous=[key_a, key_a])
        assert ring.current_id == key_a.id
        assert ring.open(ring.seal(PLAINTEXT, aad=AAD), aad=AAD, context=CONTEXT) == PLAINTEXT


class TestIntegrationAad:
    @pytest.mark.parametrize(
        ("integration_id", "expected"),
        [
            (1, b"cost-worker/integration/v1/1"),
            (7, b"cost-worker/integration/v1/7"),
            (12345, b"cost-worker/integration/v1/12345"),
        ],
    )
    def test_format(self, integration_id: int, expected: bytes) -> None:
        """The AAD is a fixed, versioned prefix plus the row id."""
        assert integration_aad(integration_id) == expected

    @pytest.mark.parametrize("bad", [True, "7", 7.0, None])
    def test_rejects_non_integers(self, bad: object) -> None:
        """Only a real int row id is accepted (True would silently become 'True')."""
        with pytest.raises(TypeError):
            integration_aad(bad)  # type: ignore[arg-type]


VALID = _text(FIXED_KEY_BYTES)  # 44 characters, ends with '='
SOURCE = "COST_WORKER_MASTER_KEY"


class TestMasterKey:
    def test_generate_is_random(self) -> None:
        """Two generated keys differ, and so do their ids."""
        a, b = MasterKey.generate(), MasterKey.generate()
        assert a != b
        assert a.id != b.id

    def test_id_is_pinned(self) -> None:
        """The id is the first 16 hex of SHA-256 over the domain prefix and the key bytes."""
        assert MasterKey(FIXED_KEY_BYTES).id == FIXED_KEY_ID

    def test_id_same_in_another_process(self) -> None:
        """A fresh interpreter (different hash seed) derives the same id for the same key."""
        code = f"from worker.vault import MasterKey; print(MasterKey.from_text({VALID!r}, source='t').id)"
        env = {**os.environ, "PYTHONHASHSEED": "12345"}
        root = Path(__file__).parents[1]
        argv = [sys.executable, "-c", code]
        out = subprocess.run(argv, capture_output=True, text=True, check=True, env=env, cwd=root)
        assert out.stdout.strip() == FIXED_KEY_ID

    def test_text_round_trip(self, key_a: MasterKey) -> None:
        """to_text then from_text gives the same key."""
        back = MasterKey.from_text(key_a.to_text(), source=SOURCE)
        assert back == key_a
        assert back.id == key_a.id

    @pytest.mark.parametrize(
        "text",
        [VALID, VALID.rstrip("="), f"  {VALID}\n", f"\t{VALID.rstrip('=')}\r\n"],
        ids=["padded", "unpadded", "whitespace-padded", "whitespace-unpadded"],
    )
    def test_from_text_accepts(self, text: str) -> None:
        """Padding is optional and surrounding whitespace is ignored."""
        assert MasterKey.from_text(text, source=SOURCE).id == FIXED_KEY_ID

    @pytest.mark.parametrize(
        ("text", "problem"),
        [
            ("", "is empty"),
            ("   \n", "is empty"),
            (_text(bytes(16)), "decodes to 16 bytes"),
            (_text(bytes(range(31))), "decodes to 31 bytes"),
            (_text(bytes(range(33))), "decodes to 33 bytes"),
            (_text(bytes(range(64))), "decodes to 64 bytes"),
            ("not a key at all!", "whitespace"),
            ("!" * 43, "outside urlsafe base64"),
            (VALID[:20] + " " + VALID[20:], "whitespace"),
            (VALID[:20] + "é" + VALID[21:], "outside urlsafe base64"),
            (base64.b64encode(b"\xfb" * 32).decode(), "standard base64"),
            (VALID[:-2] + "f=", "not canonical"),
            (VALID + "=", "padding"),
            (VALID[:41], "not decodable"),
            (VALID[:10] + "=" + VALID[11:], "outside urlsafe base64"),
        ],
        ids=[
            "empty",
            "blank",
            "16-bytes",
            "31-bytes",
            "33-bytes",
            "64-bytes",
            "prose",
            "punctuation",
            "inner-space",
            "non-ascii",
            "standard-alphabet",
            "non-canonical",
            "double-padding",
            "impossible-length",
            "padding-in-middle",
        ],
    )
    def test_from_text_rejects(self, text: str, problem: str) -> None:
        """A malformed key is InvalidMasterKey naming the source and the problem, never the value."""
        with pytest.raises(InvalidMasterKey) as info:
            MasterKey.from_text(text, source=SOURCE)
        message = str(info.value)
        assert SOURCE in message
        assert problem in message
        assert "\n" not in message
        if text.strip():
            assert text.strip() not in message
            assert text.strip()[:8] not in message

    @pytest.mark.parametrize("length", [0, 16, 31, 33])
    def test_constructor_checks_length(self, length: int) -> None:
        """Raw bytes must be exactly 32."""
        with pytest.raises(InvalidMasterKey, match="32 bytes"):
            MasterKey(bytes(length))

    def test_equality_and_hash(self) -> None:
        """Keys are equal by their bytes and usable in sets."""
        assert MasterKey(FIXED_KEY_BYTES) == MasterKey(FIXED_KEY_BYTES)
        assert len({MasterKey(FIXED_KEY_BYTES), MasterKey(FIXED_KEY_BYTES)}) == 1

    def test_refuses_pickling(self, key_a: MasterKey) -> None:
        """A master key cannot be pickled (or copied through pickle's protocol)."""
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(key_a)
        with pytest.raises(TypeError):
            copy.deepcopy(key_a)

    def test_no_instance_dict(self, key_a: MasterKey) -> None:
        """Slots only: no __dict__ for a debugger or vars() to dump."""
        assert not hasattr(key_a, "__dict__")


class TestKeyFile:
    def test_written_0600(self, tmp_path: Path, key_a: MasterKey) -> None:
        """The key file is owner read/write only, even under a permissive umask."""
        path = tmp_path / "master.key"
        old = os.umask(0)
        try:
            write_master_key_file(path, key_a)
        finally:
            os.umask(old)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

    def test_created_0600_exclusively(
        self, tmp_path: Path, key_a: MasterKey, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The file is born 0600 with O_EXCL: there is no moment it is readable by others."""
        calls: list[tuple[int, int]] = []
        real_open: Callable[..., int] = os.open
        path = tmp_path / "master.key"

        def spy(file: object, flags: int, mode: int = 0o777, *args: object, **kwargs: object) -> int:
            if Path(str(file)) == path:
                calls.append((flags, mode))
            return real_open(file, flags, mode, *args, **kwargs)

        monkeypatch.setattr(os, "open", spy)
        write_master_key_file(path, key_a)
        assert len(calls) == 1
        flags, mode = calls[0]
        assert flags & os.O_CREAT and flags & os.O_EXCL
        assert mode == 0o600

    def test_read_back(self, tmp_path: Path, key_a: MasterKey) -> None:
        """Reading the written file gives the same key and id."""
        path = tmp_path / "master.key"
        write_master_key_file(path, key_a)
        back = read_master_key_file(path)
        assert back == key_a
        assert back.id == key_a.id

    def test_refuses_a_missing_directory(self, tmp_path: Path, key_a: MasterKey) -> None:
        """A missing directory is not created (a mistyped path would hide the key where nobody backs it up)."""
        path = tmp_path / "a" / "b" / "master.key"
        with pytest.raises(KeyFilePathRefused, match="does not exist") as info:
            write_master_key_file(path, key_a)
        assert str(tmp_path / "a" / "b") in str(info.value)
        assert not (tmp_path / "a").exists()

    def test_refuses_overwrite(self, tmp_path: Path, key_a: MasterKey, key_b: MasterKey) -> None:
        """An existing key file is never overwritten (that would lose the key sealing existing rows)."""
        path = tmp_path / "master.key"
        write_master_key_file(path, key_a)
        with pytest.raises(VaultError, match="already exists") as info:
            write_master_key_file(path, key_b)
        assert str(path) in str(info.value)
        assert read_master_key_file(path).id == key_a.id

    def test_refuses_symlink(self, tmp_path: Path, key_a: MasterKey) -> None:
        """A (dangling) symlink at the path is refused, so the key cannot be redirected elsewhere."""
        target = tmp_path / "elsewhere.key"
        path = tmp_path / "master.key"
        path.symlink_to(target)
        with pytest.raises(VaultError):
            write_master_key_file(path, key_a)
        assert not target.exists()

    @pytest.mark.parametrize(
        ("content", "problem"),
        [
            (b"", "is empty"),
            (_text(bytes(16)).encode(), "decodes to 16 bytes"),
            (b"\xff\xfe" + VALID.encode(), "not ASCII"),
            (VALID.encode() + b"\n" + VALID.encode(), "whitespace"),
        ],
        ids=["empty", "short-key", "binary", "two-keys"],
    )
    def test_read_bad_content(self, tmp_path: Path, content: bytes, problem: str) -> None:
        """Bad content is InvalidMasterKey naming the path and the problem, never the content."""
        path = tmp_path / "master.key"
        path.write_bytes(content)
        with pytest.raises(InvalidMasterKey) as info:
            read_master_key_file(path)
        assert str(path) in str(info.value)
        assert problem in str(info.value)
        assert VALID[:12] not in str(info.value)

    def test_read_missing(self, tmp_path: Path) -> None:
        """A missing file is InvalidMasterKey naming the path."""
        path = tmp_path / "nope.key"
        with pytest.raises(InvalidMasterKey, match="does not exist") as info:
            read_master_key_file(path)
        assert str(path) in str(info.value)

    def test_read_directory(self, tmp_path: Path) -> None:
        """A directory at the path is InvalidMasterKey naming the path."""
        with pytest.raises(InvalidMasterKey, match="cannot read") as info:
            read_master_key_file(tmp_path)
        assert str(tmp_path) in str(info.value)

    @pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
    def test_read_unreadable(self, tmp_path: Path, key_a: MasterKey) -> None:
        """An unreadable file is InvalidMasterKey naming the path."""
        path = tmp_path / "master.key"
        write_master_key_file(path, key_a)
        path.chmod(0)
        with pytest.raises(InvalidMasterKey, match="cannot read") as info:
            read_master_key_file(path)
        assert str(path) in str(info.value)


class TestNoLeaks:
    def test_master_key_repr(self, key_a: MasterKey) -> None:
        """repr, str and f-strings of a MasterKey show only its id."""
        for shown in (repr(key_a), str(key_a), f"{key_a}", f"{key_a!r}", repr([key_a])):
            assert_no_secret(shown, key_a)
            assert key_a.id in shown

    def test_keyring_repr(self, key_a: MasterKey, key_b: MasterKey) -> None:
        """repr and str of a Keyring show key ids only."""
        ring = Keyring(key_b, previous=[key_a])
        for shown in (repr(ring), str(ring)):
            assert_no_secret(shown, key_a)
            assert_no_secret(shown, key_b)
            assert key_a.id in shown and key_b.id in shown

    def test_keyring_refuses_pickling(self, key_a: MasterKey) -> None:
        """A keyring cannot be pickled either."""
        with pytest.raises(TypeError):
            pickle.dumps(Keyring(key_a))

    def test_sealed_repr(self, ring: Keyring, key_a: MasterKey) -> None:
        """repr of a Sealed shows the key id and the blob length, not key bytes or blob bytes."""
        sealed = ring.seal(PLAINTEXT, aad=AAD)
        for shown in (repr(sealed), str(sealed)):
            assert_no_secret(shown, key_a)
            assert key_a.id in shown
            assert repr(sealed.blob)[2:20] not in shown

    def test_error_messages(self, key_a: MasterKey, key_b: MasterKey, tmp_path: Path) -> None:
        """No vault error, with its whole traceback and chained causes, contains key material or plaintext."""
        ring_a, ring_b = Keyring(key_a), Keyring(key_b, previous=[key_a])
        text_a = key_a.to_text()
        sealed = ring_a.seal(PLAINTEXT, aad=AAD)
        bad_file = tmp_path / "bad.key"
        bad_file.write_text(key_a.to_text()[:-3] + "\n")
        existing = tmp_path / "existing.key"
        write_master_key_file(existing, key_a)

        failures: list[Callable[[], object]] = [
            lambda: Keyring(key_b).open(sealed, aad=AAD, context=CONTEXT),
            lambda: ring_a.open(sealed, aad=integration_aad(2), context=CONTEXT),
            lambda: ring_b.open(Sealed(key_a.id, flip(sealed.blob, 30)), aad=AAD, context=CONTEXT),
            lambda: ring_b.open(Sealed(key_b.id, sealed.blob), aad=AAD, context=CONTEXT),
            lambda: ring_b.reseal(Sealed(key_a.id, sealed.blob[:20]), aad=AAD, context=CONTEXT),
            lambda: MasterKey.from_text(key_a.to_text()[:-3], source=SOURCE),
            lambda: MasterKey.from_text(key_a.to_text() + "AAAA", source=SOURCE),
            lambda: MasterKey.from_text(text_a[:5] + "+" + text_a[6:], source=SOURCE),
            lambda: read_master_key_file(bad_file),
            lambda: write_master_key_file(existing, key_a),
        ]
        for failure in failures:
            with pytest.raises(VaultError) as info:
                failure()
            shown = full_traceback(info.value)
            assert_no_secret(shown, key_a)
            assert_no_secret(shown, key_b)
            assert PLAINTEXT.decode() not in shown
            assert "\n" not in str(info.value)

