"""The fake API itself behaves like the documented one (so tests built on it mean something)."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.fake_api import COST_PATH, USAGE_PATH, FakeAdminApi, cents_text, units_to_dollars

DAY = date(2026, 3, 2)


def _get(fake: FakeAdminApi, path: str, params: list[tuple[str, Any]], key: str | None = None) -> httpx.Response:
    transport = fake.transport()
    with httpx.Client(transport=transport, base_url="https://api.anthropic.com") as client:
        headers = {"x-api-key": key or fake.key, "anthropic-version": "2023-06-01"}
        return client.get(path, params=params, headers=headers)


def _window(start: date, end: date, limit: int = 31) -> list[tuple[str, Any]]:
    return [("bucket_width", "1d"), ("starting_at", f"{start}T00:00:00Z"), ("ending_at", f"{end}T00:00:00Z"),
            ("limit", limit)]  # fmt: skip


@pytest.fixture
def fake() -> FakeAdminApi:
    return FakeAdminApi(start=date(2026, 3, 1), end=date(2026, 3, 10), seed=11)


class TestMoneyFormatting:
    @pytest.mark.parametrize(
        ("units", "text", "dollars"),
        [(18432075, "1843.2075", Decimal("18.432075")), (1, "0.0001", Decimal("0.000001")), (0, "0.0000", Decimal(0)),
         (10_000, "1.0000", Decimal("0.01")), (-5, "-0.0005", Decimal("-0.000005"))],
    )  # fmt: skip
    def test_from_integers(self, units: int, text: str, dollars: Decimal) -> None:
        """Amount strings and truth dollars both come straight from integer ten-thousandths of a cent."""
        assert cents_text(units) == text
        assert units_to_dollars(units) == dollars


class TestServing:
    def test_cost_group_by_workspace_only(self, fake: FakeAdminApi) -> None:
        """Without description grouping, description-derived fields are null and amounts are summed."""
        body = _get(fake, COST_PATH, [*_window(DAY, DAY.replace(day=3)), ("group_by[]", "workspace_id")]).json()
        (bucket,) = body["data"]
        assert all(r["description"] is None and r["model"] is None for r in bucket["results"])
        total = sum(Decimal(r["amount"]) for r in bucket["results"])
        assert total.scaleb(-2) == fake.truth_cost(DAY)

    def test_too_many_dimensions(self, fake: FakeAdminApi) -> None:
        """More than five usage group_by[] dimensions is a 400, as documented."""
        dims = ["model", "workspace_id", "service_tier", "context_window", "api_key_id", "inference_geo"]
        response = _get(fake, USAGE_PATH, [*_window(DAY, DAY.replace(day=3)), *(("group_by[]", d) for d in dims)])
        assert response.status_code == 400
        assert "more than 5" in response.json()["error"]["message"]

    def test_cursor_bound_to_its_query(self, fake: FakeAdminApi) -> None:
        """A cursor only works with the same other parameters; an unknown cursor is a 400."""
        first = _get(fake, COST_PATH, _window(date(2026, 3, 1), date(2026, 3, 10), limit=3)).json()
        assert first["has_more"] and first["next_page"]
        same = _get(fake, COST_PATH, [*_window(date(2026, 3, 1), date(2026, 3, 10), limit=3),
                                      ("page", first["next_page"])])  # fmt: skip
        assert same.status_code == 200 and same.json()["data"][0]["starting_at"] == "2026-03-04T00:00:00Z"
        changed = _get(fake, COST_PATH, [*_window(date(2026, 3, 1), date(2026, 3, 10), limit=4),
                                         ("page", first["next_page"])])  # fmt: skip
        assert changed.status_code == 400
        unknown = _get(fake, COST_PATH, [*_window(date(2026, 3, 1), date(2026, 3, 10), limit=3), ("page", "nope")])
        assert unknown.status_code == 400

    def test_last_page(self, fake: FakeAdminApi) -> None:
        """The last page says has_more false with a null next_page."""
        body = _get(fake, USAGE_PATH, _window(date(2026, 3, 1), date(2026, 3, 10))).json()
        assert len(body["data"]) == 9 and body["has_more"] is False and body["next_page"] is None

    def test_wrong_key_and_records(self, fake: FakeAdminApi) -> None:
        """A wrong key gets the 401 error envelope; every request is recorded with its status."""
        response = _get(fake, "/v1/organizations/me", [], key="sk-ant-admin01-wrong")
        assert response.status_code == 401
        body = json.loads(response.content)
        assert body["error"]["type"] == "authentication_error" and body["request_id"] == response.headers["request-id"]
        assert [(r.path, r.status) for r in fake.requests] == [("/v1/organizations/me", 401)]

    def test_truth_is_independent_of_grouping(self, fake: FakeAdminApi) -> None:
        """Per-model truth sums to the day's truth (non-token costs under model None)."""
        assert sum(fake.truth_cost(DAY, m) for m in fake.models) == fake.truth_cost(DAY)
