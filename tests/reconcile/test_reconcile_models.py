"""Model id normalization against the bill's ids."""

from __future__ import annotations

import pytest

from worker.reconcile import ModelNormalizer

KNOWN = [
    "claude-sonnet-4-6",
    "claude-opus-4-8",
    "claude-sonnet-4-20250514",
    "claude-haiku-4-5-20251001",
    "claude-3-5-sonnet-20240620",
    "claude-3-5-sonnet-20241022",
    "claude-3-7-sonnet-20250219",
]
ALIASES = {"my-fast-model": "claude-haiku-4-5-20251001", "claude-sonnet-4-6": "claude-sonnet-4-6"}


class TestModelNormalizer:
    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ("claude-sonnet-4-6", "claude-sonnet-4-6"),
            ("Claude-Sonnet-4-6", "claude-sonnet-4-6"),
            ("anthropic/claude-sonnet-4-6", "claude-sonnet-4-6"),
            ("openrouter/anthropic/claude-sonnet-4.6", "claude-sonnet-4-6"),
            ("claude-opus-4.8", "claude-opus-4-8"),
            ("claude-opus-4-8[1m]", "claude-opus-4-8"),
            ("claude-sonnet-4-6-20260217", "claude-sonnet-4-6"),
            ("claude-sonnet-4", "claude-sonnet-4-20250514"),
            ("claude-sonnet-4@20250514", "claude-sonnet-4-20250514"),
            ("us.anthropic.claude-sonnet-4-20250514-v1:0", "claude-sonnet-4-20250514"),
            ("anthropic.claude-haiku-4-5-20251001-v1:0", "claude-haiku-4-5-20251001"),
            ("claude-haiku-4-5", "claude-haiku-4-5-20251001"),
            ("claude-haiku-4.5-latest", "claude-haiku-4-5-20251001"),
            ("claude-sonnet-3.7", "claude-3-7-sonnet-20250219"),
            ("claude-3-7-sonnet-latest", "claude-3-7-sonnet-20250219"),
            ("my-fast-model", "claude-haiku-4-5-20251001"),
            ("MY-FAST-MODEL", "claude-haiku-4-5-20251001"),
            # unmatched
            ("claude-3-5-sonnet", None),  # two dated snapshots: ambiguous
            ("claude-sonnet-4-20250101", None),  # another date is another snapshot
            ("gpt-4o", None),
            ("claude-opus-4-1", None),
        ],
    )
    def test_table(self, raw: str, expected: str | None) -> None:
        """Prefixes, suffixes, dots, dates and aliases map to the bill's id, or to None."""
        assert ModelNormalizer(KNOWN, ALIASES).normalize(raw) == expected

    def test_alias_overrides_matching(self) -> None:
        """A [models] alias wins even where a rule would match something else."""
        normalizer = ModelNormalizer(KNOWN, {"claude-3-5-sonnet": "claude-3-5-sonnet-20241022"})
        assert normalizer.normalize("claude-3.5-sonnet") == "claude-3-5-sonnet-20241022"

    def test_unmatched_ids_are_counted(self) -> None:
        """Every unmatched sighting is counted under the raw id."""
        normalizer = ModelNormalizer(KNOWN)
        for raw in ("gpt-4o", "gpt-4o", "claude-sonnet-4-6", "mystery"):
            normalizer.normalize(raw)
        assert normalizer.unmatched == {"gpt-4o": 2, "mystery": 1}
