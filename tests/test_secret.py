"""AdminKey: validation before any request, the display hint, and no way to leak it by accident."""

from __future__ import annotations

import logging
import pickle
import random

import pytest

from worker.api.errors import safe_text
from worker.logs import JsonFormatter, RedactFilter, TextFormatter, scrub
from worker.secret import KEY_SHAPE, AdminKey, InvalidAdminKey, mask_keys

KEY = "sk-ant-admin01-Zq3xVbN8mK2pL5tR7wY9aB4cD6eF1gH0jK3lM5nP7qR9sT1uV3wX5yZ7-x7Qa"


class TestAdminKey:
    @pytest.mark.parametrize(("raw", "message"), [
        ("sk-ant-api03-abcdefghijklmnop", "regular API key (sk-ant-api...)"),
        ("xoxb-123", "Admin key (sk-ant-admin...) is needed"),
        ("", "no Admin API key given"),
        ("sk-ant-admin01-abc def", "whitespace"),
    ])
    def test_refused(self, raw: str, message: str) -> None:
        """Anything but an Admin key is refused with a message that never echoes it."""
        with pytest.raises(InvalidAdminKey, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
            AdminKey(raw)
        if len(raw) > 12:
            assert raw not in str(info.value)

    def test_trimmed_and_hinted(self) -> None:
        """Surrounding whitespace is trimmed; the hint shows the prefix and last four characters only."""
        key = AdminKey(f"\n  {KEY} \t")
        assert key.reveal() == KEY
        assert key.hint == "sk-ant-admin01-...x7Qa"

    def test_never_shown(self) -> None:
        """repr, str, f-strings and pickling never expose the key."""
        key = AdminKey(KEY)
        for text in (repr(key), str(key), f"{key}", f"{key!r}", repr([key]), repr({"k": key})):
            assert KEY not in text
        with pytest.raises(TypeError):
            pickle.dumps(key)

    def test_fingerprint_is_stable_and_not_the_key(self) -> None:
        """The fingerprint identifies the key without containing it."""
        assert AdminKey(KEY).fingerprint == AdminKey(KEY).fingerprint
        assert KEY[15:] not in AdminKey(KEY).fingerprint


class TestLogScrubbing:
    def test_filter_masks_keys_in_messages_and_args(self) -> None:
        """A key that reaches a log call anyway is masked before any handler writes it."""
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "sent %s to %s", (KEY, "api"), None)
        RedactFilter().filter(record)
        line = JsonFormatter().format(record)
        assert KEY not in line and "sk-ant-admin" in line

    def test_scrub_leaves_short_prefixes(self) -> None:
        """Prose that names the prefix (sk-ant-api...) is not mangled."""
        assert scrub("an Admin key (sk-ant-admin...) is needed") == "an Admin key (sk-ant-admin...) is needed"


class TestOneMaskingRule:
    """What AdminKey accepts and what the masks cover are one rule (worker.secret.KEY_SHAPE)."""

    ODD = "sk-ant-admin01-Abc123.XYZ+secretpart/tail="

    def test_the_issue_key_is_masked_whole(self) -> None:
        """A key with '.', '+', '/' and '=' in its body is masked to its public head everywhere."""
        key = AdminKey(self.ODD)
        assert scrub(f"sent {key.reveal()} to the API") == "sent sk-ant-admin01-*** to the API"
        assert safe_text(f"refused: {key.reveal()}") == "refused: sk-ant-admin01-***"
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "key %s", (key.reveal(),), None)
        RedactFilter().filter(record)
        for line in (JsonFormatter().format(record), TextFormatter().format(record)):
            assert "Abc123" not in line and "secretpart" not in line and "tail=" not in line

    def test_every_accepted_key_is_masked_whole(self) -> None:
        """For thousands of random keys over printable characters: if AdminKey accepts one, no character
        of its secret body survives masking, whatever surrounds it."""
        rng = random.Random(14)
        alphabet = [chr(c) for c in range(33, 127)] + ["é", "ß", "€", "中", "\u200b", "\u00a0"]
        accepted = 0
        for _ in range(3000):
            body = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
            value = rng.choice(["sk-ant-admin01-", "sk-ant-admin", "sk-ant-admin02-", "sk-ant-adminx"]) + body
            try:
                key = AdminKey(value)
            except InvalidAdminKey:
                continue
            accepted += 1
            head = KEY_SHAPE.fullmatch(key.reveal())
            assert head is not None
            for before, after in (("", ""), ("key=", ","), ("'", "'"), ("(", ")")):
                assert mask_keys(f"{before}{key.reveal()}{after}") == f"{before}{head.group(1)}***", value
        assert accepted > 1000

    @pytest.mark.parametrize("text", [
        "an Admin key (sk-ant-admin...) is needed",
        "key sk-ant-admin01-...x7Qa replaced by sk-ant-admin...abcd",
        "a regular API key (sk-ant-api...)",
    ])  # fmt: skip
    def test_hints_and_prose_are_shown_as_written(self, text: str) -> None:
        """The key hint and prose naming the prefix are not keys: left as they are."""
        assert mask_keys(text) == text

    @pytest.mark.parametrize("value", ["sk-ant-admin01-...x7Qa", "sk-ant-admin01-", "sk-ant-admin", "sk-ant-admin.x"])
    def test_what_the_rule_would_not_mask_is_refused(self, value: str) -> None:
        """A value the masking rule would not cover whole (a pasted hint, a bare prefix) is not a key."""
        with pytest.raises(InvalidAdminKey):
            AdminKey(value)

    def test_the_hint_survives_a_log_line(self) -> None:
        """A log line naming the hint keeps it readable."""
        hint = AdminKey(KEY).hint
        assert scrub(f"connected (key {hint})") == f"connected (key {hint})"
