"""Parsing report rows: exact money, nested cache counters, unknown fields kept; the typed page decoding
equals the general parser on every input."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from typing import Any, NoReturn

import msgspec
import pytest

from worker.api import CostRow, ProtocolViolation, UsageRow, cents_to_dollars, models
from worker.api.models import (
    ReportBody,
    decode_cost_report,
    decode_json,
    decode_usage_report,
    parse_bucket,
    parse_cost_row,
    parse_organization,
    parse_report,
    parse_usage_row,
)

DAY = date(2026, 3, 2)


class TestCentsToDollars:
    @pytest.mark.parametrize(
        ("amount", "dollars"),
        [
            ("1843.2075", Decimal("18.432075")),
            ("0.0001", Decimal("0.000001")),
            ("100", Decimal("1")),
            ("0", Decimal("0")),
            ("-250.5", Decimal("-2.505")),
            ("123456789012.1234567890123456789", Decimal("1234567890.121234567890123456789")),  # 31 digits
            (1843, Decimal("18.43")),
            (Decimal("1843.2075"), Decimal("18.432075")),
            ("1e3", Decimal("10")),
        ],
    )
    def test_exact(self, amount: object, dollars: Decimal) -> None:
        """Cents become dollars exactly, with every digit kept (no float, no context rounding)."""
        result = cents_to_dollars(amount)
        assert result == dollars
        assert isinstance(result, Decimal)

    @pytest.mark.parametrize(
        "amount",
        [None, True, False, "NaN", "nan", "Infinity", "-inf", Decimal("NaN"), Decimal("Infinity"), "", "  ",
         "12,50", "$1.00", "1_000", "0x10", 1.5, [], {"v": 1}],
    )  # fmt: skip
    def test_rejects(self, amount: object) -> None:
        """Anything that is not a finite decimal amount is a protocol violation, never a silent zero."""
        with pytest.raises(ProtocolViolation):
            cents_to_dollars(amount)


def _cost(**over: Any) -> dict[str, Any]:
    row = {"amount": "1843.2075", "currency": "USD", "workspace_id": "wrkspc_1", "description": "d",
           "cost_type": "tokens", "model": "claude-sonnet-4-6", "token_type": "uncached_input_tokens",
           "service_tier": "standard", "context_window": "0-200k", "inference_geo": "global"}  # fmt: skip
    row.update(over)
    return row


class TestCostRow:
    def test_fields(self) -> None:
        """Every documented field lands in its column; amount is dollars."""
        row = parse_cost_row(_cost(), DAY)
        assert row == CostRow(DAY, "wrkspc_1", "d", "tokens", "claude-sonnet-4-6", "uncached_input_tokens",
                              "standard", "0-200k", "global", Decimal("18.432075"), "USD", {})  # fmt: skip

    def test_default_workspace_and_non_token_cost(self) -> None:
        """A null workspace stays None (the default workspace); web search has no model."""
        row = parse_cost_row(_cost(workspace_id=None, cost_type="web_search", model=None, token_type=None), DAY)
        assert (row.workspace_id, row.model, row.token_type, row.cost_type) == (None, None, None, "web_search")

    def test_unknown_values_and_fields_kept(self) -> None:
        """New cost types, token types and fields are kept verbatim, not rejected."""
        row = parse_cost_row(_cost(cost_type="session_usage_v2", token_type="brand_new", billing={"x": [1]}), DAY)
        assert row.cost_type == "session_usage_v2"
        assert row.token_type == "brand_new"
        assert dict(row.extra) == {"billing": {"x": [1]}}

    @pytest.mark.parametrize("over", [{"currency": None}, {"model": 5}, {"amount": "NaN"}, {"workspace_id": []}])
    def test_malformed(self, over: dict[str, Any]) -> None:
        """Wrong types on fields the sync relies on are protocol violations."""
        with pytest.raises(ProtocolViolation):
            parse_cost_row(_cost(**over), DAY)

    def test_rows_are_hashable(self) -> None:
        """Rows can go in sets even with extra fields."""
        assert len({parse_cost_row(_cost(z=1), DAY), parse_cost_row(_cost(z=1), DAY)}) == 1


def _usage(**over: Any) -> dict[str, Any]:
    row = {"uncached_input_tokens": 100, "cache_read_input_tokens": 20,
           "cache_creation": {"ephemeral_5m_input_tokens": 7, "ephemeral_1h_input_tokens": 3},
           "output_tokens": 50, "server_tool_use": {"web_search_requests": 2}, "workspace_id": None,
           "model": "claude-opus-4-6", "service_tier": "batch", "context_window": "200k-1M",
           "api_key_id": "apikey_1", "inference_geo": None}  # fmt: skip
    row.update(over)
    return row


class TestUsageRow:
    def test_nested_cache_creation(self) -> None:
        """Cache writes come from the nested cache_creation pair, not a flat field."""
        row = parse_usage_row(_usage(), DAY)
        assert (row.cache_creation_5m_input_tokens, row.cache_creation_1h_input_tokens) == (7, 3)
        assert row.web_search_requests == 2
        assert row.input_tokens == 100 + 20 + 7 + 3
        assert row == UsageRow(DAY, None, "claude-opus-4-6", "batch", "200k-1M", "apikey_1", None,
                               100, 20, 7, 3, 50, 2, {})  # fmt: skip

    def test_flat_field_is_not_mistaken_for_cache_writes(self) -> None:
        """A flat cache_creation_input_tokens is unknown: kept in extra, never counted."""
        row = parse_usage_row(_usage(cache_creation=None, cache_creation_input_tokens=99), DAY)
        assert row.cache_creation_5m_input_tokens == row.cache_creation_1h_input_tokens == 0
        assert row.extra["cache_creation_input_tokens"] == 99

    def test_null_counts_are_zero(self) -> None:
        """Null counters and null nested objects count as zero."""
        row = parse_usage_row(_usage(output_tokens=None, server_tool_use=None,
                                     cache_creation={"ephemeral_5m_input_tokens": None}), DAY)  # fmt: skip
        assert (row.output_tokens, row.web_search_requests, row.cache_creation_5m_input_tokens) == (0, 0, 0)

    def test_unknown_nested_counters_kept(self) -> None:
        """New nested counters and top-level fields go to extra under dotted names."""
        row = parse_usage_row(
            _usage(cache_creation={"ephemeral_5m_input_tokens": 1, "ephemeral_30m_input_tokens": 9},
                   server_tool_use={"web_search_requests": 1, "code_execution_requests": 4}, speed="fast"),
            DAY,
        )  # fmt: skip
        assert dict(row.extra) == {
            "cache_creation.ephemeral_30m_input_tokens": 9,
            "server_tool_use.code_execution_requests": 4,
            "speed": "fast",
        }

    @pytest.mark.parametrize(
        "over",
        [{"output_tokens": 1.5}, {"output_tokens": Decimal("1.5")}, {"output_tokens": "12"}, {"output_tokens": True},
         {"output_tokens": -1}, {"cache_creation": {"ephemeral_1h_input_tokens": "3"}}, {"cache_creation": 5}],
    )  # fmt: skip
    def test_non_integer_counts(self, over: dict[str, Any]) -> None:
        """Counts that are not non-negative integers are protocol violations."""
        with pytest.raises(ProtocolViolation):
            parse_usage_row(_usage(**over), DAY)

    def test_integral_decimal_count_accepted(self) -> None:
        """A count written as 12.0 or 1e3 (parsed as Decimal) is still an integer."""
        assert parse_usage_row(_usage(output_tokens=Decimal("1E+3")), DAY).output_tokens == 1000


class TestBucket:
    @pytest.mark.parametrize(
        ("start", "day"),
        [("2026-03-02T00:00:00Z", date(2026, 3, 2)), ("2026-03-02T00:00:00+00:00", date(2026, 3, 2)),
         ("2026-03-02T01:00:00+01:00", date(2026, 3, 2))],
    )  # fmt: skip
    def test_day_from_utc_midnight(self, start: str, day: date) -> None:
        """The bucket's day is the date of its UTC-midnight start."""
        assert parse_bucket({"starting_at": start, "results": []}, parse_cost_row).day == day

    @pytest.mark.parametrize(
        "bucket",
        [{"starting_at": "2026-03-02T05:00:00Z", "results": []}, {"starting_at": "2026-03-02T00:00:00", "results": []},
         {"starting_at": "yesterday", "results": []}, {"results": []},
         {"starting_at": "2026-03-02T00:00:00Z", "ending_at": "2026-03-04T00:00:00Z", "results": []},
         {"starting_at": "2026-03-02T00:00:00Z", "results": {}}],
    )  # fmt: skip
    def test_malformed(self, bucket: dict[str, Any]) -> None:
        """Non-midnight, naive, unparsable, multi-day buckets and non-list results are violations."""
        with pytest.raises(ProtocolViolation):
            parse_bucket(bucket, parse_cost_row)


def test_organization() -> None:
    """/me parses into an Organization; a missing id is a violation."""
    org = parse_organization({"id": "org-uuid", "type": "organization", "name": "Acme", "new": 1})
    assert (org.id, org.name, org.type) == ("org-uuid", "Acme", "organization")
    with pytest.raises(ProtocolViolation):
        parse_organization({"name": "Acme"})


class TestSaneBounds:
    """Amounts and counts no bill has are refused where rows are parsed, before any arithmetic could
    expand them (a 20-byte "1e999999999" is a billion digits once summed or printed)."""

    @pytest.mark.parametrize("amount", [
        "1e999999999", Decimal("1.5e999999999"), "1e400", "10000000000000", "-1e13", 10**13, 10**4000,
        "0E-999999999", "1e-31", "1." + "0" * 70,
    ], ids=["1e999999999", "json-1.5e999999999", "1e400", "10^13", "-10^13", "int-10^13", "int-4001-digits",
            "zero-e-999999999", "31-places", "72-characters"])  # fmt: skip
    def test_amount_outside_is_a_one_line_violation(self, amount: object) -> None:
        """An amount at or past +-10^13 cents, finer than 30 places of a cent, or absurdly long is refused."""
        with pytest.raises(ProtocolViolation) as caught:
            cents_to_dollars(amount)
        assert "\n" not in str(caught.value) and len(str(caught.value)) < 200

    @pytest.mark.parametrize(("amount", "dollars"), [
        ("9999999999999.999999", Decimal("99999999999.99999999")),
        ("-9999999999999", Decimal("-99999999999.99")),
        ("1e-30", Decimal("1e-32")),
        ("0.000000000000000000000000000001", Decimal("1e-32")),
    ])  # fmt: skip
    def test_amount_inside_is_exact(self, amount: str, dollars: Decimal) -> None:
        """Just inside the bounds every digit is kept."""
        assert cents_to_dollars(amount) == dollars

    def test_json_number_is_refused_unexpanded(self) -> None:
        """The JSON number 1.5e999999999, decoded as the client decodes (Decimal), fails as a violation."""
        raw = json.loads('{"amount": 1.5e999999999, "currency": "USD"}', parse_float=Decimal)
        with pytest.raises(ProtocolViolation, match="sane bound"):
            parse_cost_row(raw, DAY)

    @pytest.mark.parametrize("over", [
        {"output_tokens": Decimal("1.5e999999999")}, {"output_tokens": Decimal("1e400")},
        {"uncached_input_tokens": 10**15 + 1}, {"cache_read_input_tokens": 2**63},
        {"cache_creation": {"ephemeral_1h_input_tokens": Decimal("1e16")}},
        {"server_tool_use": {"web_search_requests": 10**4000}},
    ], ids=["1.5e999999999", "1e400", "10^15+1", "2^63", "cache-1e16", "4001-digits"])  # fmt: skip
    def test_count_above_the_bound_is_a_violation(self, over: dict[str, Any]) -> None:
        """A count above 10^15 tokens for one row of one day is refused before it becomes an int."""
        with pytest.raises(ProtocolViolation, match="sane bound") as caught:
            parse_usage_row(_usage(**over), DAY)
        assert "\n" not in str(caught.value) and len(str(caught.value)) < 200

    def test_count_at_the_bound_is_kept(self) -> None:
        """10^15 itself (as an int or as Decimal 1e15) is a count like any other."""
        row = parse_usage_row(_usage(output_tokens=10**15, uncached_input_tokens=Decimal("1e15")), DAY)
        assert row.output_tokens == row.uncached_input_tokens == 10**15


# --- whole pages: the typed fast path against the general parser ---------------------------------------

_RAW = "@raw:"  # a string value written into the JSON text as is (numbers JSON cannot spell from Python)


def _json(value: object) -> bytes:
    text = json.dumps(value, separators=(",", ":"))
    return re.sub(rf'"{_RAW}([^"]*)"', r"\1", text).encode()


def _page(rows: list[Any], *, days: int = 1, has_more: object = False, next_page: object = None,
          **bucket: Any) -> dict[str, Any]:
    data = [{"starting_at": f"2026-03-{2 + i:02d}T00:00:00Z", "ending_at": f"2026-03-{3 + i:02d}T00:00:00Z",
             "results": rows, **bucket} for i in range(days)]  # fmt: skip
    return {"data": data, "has_more": has_more, "next_page": next_page}


def _outcome(decode: Callable[[], ReportBody[Any]]) -> object:
    """What decoding gives: the page, each row's repr (every Decimal digit and exponent) and its `extra` by key
    (the key order is not kept: storage reads it sorted), or the error."""
    try:
        body = decode()
    except ProtocolViolation as exc:
        return ("violation", str(exc))
    except ValueError as exc:
        return ("not JSON", str(exc))
    return body, [[(repr(msgspec.structs.replace(r, extra={})), sorted(r.extra.items()), type(r.extra))
                   for r in b.rows] for b in body.buckets]


def _both(content: bytes, fast: Callable[[bytes, int], ReportBody[Any]], parse_row: Any,
          limit: int = 31) -> tuple[object, object]:
    return (_outcome(lambda: fast(content, limit)),
            _outcome(lambda: parse_report(decode_json(content), limit, parse_row)))


_STRINGS: list[Any] = [None, "x", "", "é" * 3, "claude-x" * 200, 5, 1.5, True, [], {"a": 1}, f"{_RAW}1e3"]
_AMOUNTS: list[Any] = ["1843.2075", "0", "-0", "-250.5", "007.50", "1e3", "1.5E-4", " 12 ", "12,50", "NaN", "Infinity", "",
            "9999999999999.999999", "10000000000000", "1e-30", "1e-31", "0." + "0" * 29 + "1", "1." + "0" * 70,
            "١٢", "1_000", "0x10", 1843, -5, 10**13, 10**40, 18.5, f"{_RAW}1843.2075", f"{_RAW}1e999999999",
            f"{_RAW}1.5e999999999", f"{_RAW}-0.0", True, None, {"v": 1}, [1]]  # fmt: skip
_COUNTS: list[Any] = [0, 7, None, -1, 10**15, 10**15 + 1, 2**63, 10**40, 1.5, f"{_RAW}1e3", f"{_RAW}12.0", f"{_RAW}1e400",
           f"{_RAW}{'9' * 5000}", "12", True, [], {}]  # fmt: skip
_NESTED: list[Any] = [None, {}, 5, [], "x"]
_MISSING = object()


def _mutate(row: dict[str, Any], rng: random.Random, choices: dict[str, list[Any]]) -> dict[str, Any]:
    row = dict(row)
    for _ in range(rng.randrange(3)):
        name = rng.choice(sorted(choices))
        value = rng.choice([*choices[name], _MISSING])
        if value is _MISSING:
            row.pop(name, None)
        else:
            row[name] = value
    return row


class TestTypedPages:
    """`decode_cost_report`/`decode_usage_report` read the usual page into typed structs; whatever does not
    fit goes to the general parser. Both must give the very same rows (every Decimal digit and exponent,
    `extra`) or the very same error, on every input."""

    def test_the_usual_page_takes_the_typed_path(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Documented fields only: the general parser is not used, and the rows are what it would give."""
        cost = _json(_page([_cost(), _cost(workspace_id=None, model=None)], days=3))
        usage = _json(_page([_usage(), _usage(account_id=None, service_account_id=None), _usage(speed="fast")]))
        want = _both(cost, decode_cost_report, parse_cost_row)[1], _both(usage, decode_usage_report, parse_usage_row)[1]

        def general(*_: object) -> NoReturn:
            raise AssertionError("the general parser was used")

        monkeypatch.setattr(models, "parse_report", general)
        got = _outcome(lambda: decode_cost_report(cost, 31)), _outcome(lambda: decode_usage_report(usage, 31))
        assert got == want
        row = decode_cost_report(cost, 31).buckets[0].rows[0]
        assert str(row.amount_usd) == "18.432075" and row.extra == {}
        rows = decode_usage_report(usage, 31).buckets[0].rows
        assert [dict(r.extra) for r in rows] == [{}, {"account_id": None, "service_account_id": None}, {"speed": "fast"}]

    @pytest.mark.parametrize(("body", "extra"), [
        (_page([_cost(billing={"x": [1]})]), {"billing": {"x": [1]}}),
        ({**_page([_cost()]), "new": 1}, {}),
        (_page([_cost()], note="n"), {}),
    ])  # fmt: skip
    def test_unknown_fields_are_kept_or_ignored_as_before(self, body: object, extra: dict[str, Any]) -> None:
        """An unknown field of a row is kept in `extra`; one of a bucket or of the body is ignored."""
        fast, general = _both(_json(body), decode_cost_report, parse_cost_row)
        assert fast == general
        assert decode_cost_report(_json(body), 31).buckets[0].rows[0].extra == extra

    def test_unknown_nested_counters_are_kept(self) -> None:
        content = _json(_page([_usage(cache_creation={"ephemeral_30m_input_tokens": 9})]))
        got, want = _both(content, decode_usage_report, parse_usage_row)
        assert got == want
        row = decode_usage_report(content, 31).buckets[0].rows[0]
        assert dict(row.extra) == {"cache_creation.ephemeral_30m_input_tokens": 9}

    @pytest.mark.parametrize("amount", _AMOUNTS, ids=[repr(a)[:24] for a in _AMOUNTS])
    def test_amounts(self, amount: object) -> None:
        content = _json(_page([_cost(), _cost(amount=amount)]))
        fast, general = _both(content, decode_cost_report, parse_cost_row)
        assert fast == general

    @pytest.mark.parametrize("count", _COUNTS, ids=[repr(c)[:24] for c in _COUNTS])
    @pytest.mark.parametrize("name", ["output_tokens", "cache_creation", "server_tool_use"])
    def test_counts(self, name: str, count: object) -> None:
        value = count if name == "output_tokens" else {
            "cache_creation": {"ephemeral_1h_input_tokens": count}, "server_tool_use": {"web_search_requests": count},
        }[name]
        fast, general = _both(_json(_page([_usage(), _usage(**{name: value})])), decode_usage_report, parse_usage_row)
        assert fast == general

    @pytest.mark.parametrize("body", [
        _page([]), _page([], days=0), _page([], days=32), _page([], results=None), _page([], results={}),
        _page([], ending_at=None), _page([], ending_at="2026-03-09T00:00:00Z"), _page([], ending_at=5),
        _page([], ending_at=""), _page([], ending_at="2026-03-03T00:00:00+00:00"),
        _page([], starting_at="2026-03-02T05:00:00Z"), _page([], starting_at="2026-03-02T01:00:00+01:00"),
        _page([], starting_at="2026-03-02"), _page([], starting_at=None), _page([], has_more=True, next_page="c"),
        _page([], has_more=True), _page([], has_more="no"), _page([], has_more=False, next_page=5),
        {"data": [], "has_more": False}, {"data": "x", "has_more": False}, {"has_more": False}, [1, 2], None,
        {"data": [5], "has_more": False}, {"data": [], "has_more": False, "next_page": None, "more": [1]},
    ], ids=lambda b: json.dumps(b)[-60:])  # fmt: skip
    def test_envelopes_and_buckets(self, body: object) -> None:
        for fast, parse_row in ((decode_cost_report, parse_cost_row), (decode_usage_report, parse_usage_row)):
            got, want = _both(_json(body), fast, parse_row)
            assert got == want

    @pytest.mark.parametrize("content", [
        b"", b"{", b'{"data":[],"has_more":false} x', b'{"data":[],"has_more":false,"x":"\xff"}',
        b'{"data":[{"starting_at":"2026-03-02T00:00:00Z","x":"\xff"}],"has_more":false}',
        b'{"data":[{"starting_at":"2026-03-02T00:00:00Z","results":[{"amount":"1","currency":"USD","x":"\xff"}]}],'
        b'"has_more":false}',
        b'{"data":[{"starting_at":"2026-03-02T00:00:00Z","results":[{"amount":"1","currency":"\xff"}]}]',
        b'{"data":[],"has_more":false,"next_page":null,"next_page":"c"}',
        b'{"data":[],"data":[5],"has_more":false}', b'{"data":[],"has_more":false,"x":' + b"9" * 5000 + b"}",
    ])  # fmt: skip
    def test_raw_bodies(self, content: bytes) -> None:
        """Garbled JSON stays a retried ValueError; duplicate keys keep the last value, as plain JSON does."""
        for fast, parse_row in ((decode_cost_report, parse_cost_row), (decode_usage_report, parse_usage_row)):
            got, want = _both(content, fast, parse_row)
            assert got == want

    def test_limit(self) -> None:
        """More buckets than `limit` is refused before any row is read, on both paths."""
        content = _json(_page([_cost(amount="NaN")], days=4))
        got, want = _both(content, decode_cost_report, parse_cost_row, limit=3)
        assert got == want == ("violation", "page holds 4 buckets, more than limit=3")

    @pytest.mark.parametrize("seed", range(40))
    def test_random_pages(self, seed: int) -> None:
        """Random mixes of the values above, several rows a page: the same outcome every time."""
        rng = random.Random(seed)
        cost_strings = ("workspace_id", "description", "cost_type", "model", "token_type", "service_tier",
                        "context_window", "inference_geo")
        usage_strings = ("workspace_id", "model", "service_tier", "context_window", "api_key_id", "inference_geo")
        usage_counts = ("uncached_input_tokens", "cache_read_input_tokens", "output_tokens")
        cost_choices: dict[str, list[Any]] = {**dict.fromkeys(cost_strings, _STRINGS), "amount": _AMOUNTS,
                        "currency": [None, "", "USD", "EUR", 5], "new": [1, None]}
        usage_choices: dict[str, list[Any]] = {
            **dict.fromkeys(usage_strings, _STRINGS), **dict.fromkeys(usage_counts, _COUNTS),
            "cache_creation": [*_NESTED, {"ephemeral_5m_input_tokens": 3, "ephemeral_1h_input_tokens": None}],
            "server_tool_use": [*_NESTED, {"web_search_requests": 2, "code_execution_requests": 1}],
            **dict.fromkeys(("speed", "account_id", "service_account_id"), [None, "fast", "user_1", 5]),
        }  # fmt: skip
        for _ in range(10):
            cost = _json(_page([_mutate(_cost(), rng, cost_choices) for _ in range(rng.randrange(1, 4))], days=2))
            usage = _json(_page([_mutate(_usage(), rng, usage_choices) for _ in range(rng.randrange(1, 4))]))
            got, want = _both(cost, decode_cost_report, parse_cost_row)
            assert got == want, cost
            got, want = _both(usage, decode_usage_report, parse_usage_row)
            assert got == want, usage
