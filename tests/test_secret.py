"""AdminKey: validation before any request, the display hint, and no way to leak it by accident."""

from __future__ import annotations

import logging
import pickle

import pytest

from worker.logs import JsonFormatter, RedactFilter, scrub
from worker.secret import AdminKey, InvalidAdminKey

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
