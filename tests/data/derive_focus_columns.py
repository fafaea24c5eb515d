"""Derive tests/data/focus_1_2_columns.json from a checkout of FinOps-Open-Cost-and-Usage-Spec/FOCUS_Spec at tag v1.2.

    git -C FOCUS_Spec checkout v1.2 && python tests/data/derive_focus_columns.py FOCUS_Spec/specification

Columns are read from each `specification/columns/*.md` (Column ID, Content constraints, Allowed values);
the rules were read off the requirement bullets of the file each names and written here by hand in a
form tests/export/test_focus.py evaluates.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("focus_1_2_columns.json")
UC = {"ChargeCategory": ["Usage", "Purchase"]}
NOT_CORR = {"ChargeClass": ["Correction"]}

RULES: list[dict[str, Any]] = [
    {"kind": "null_iff", "column": "ConsumedUnit", "other": "ConsumedQuantity", "source": "specification/columns/consumedunit.md"},
    {"kind": "null_iff", "column": "PricingUnit", "other": "PricingQuantity", "source": "specification/columns/pricingunit.md"},
    {"kind": "null_iff", "column": "RegionName", "other": "RegionId", "source": "specification/columns/regionname.md"},
    {"kind": "null_iff", "column": "SubAccountName", "other": "SubAccountId", "source": "specification/columns/subaccountname.md"},
    {"kind": "null_when_null", "column": "SkuMeter", "other": "SkuId", "source": "specification/columns/skumeter.md"},
    {"kind": "null_when_null", "column": "SkuPriceDetails", "other": "SkuPriceId", "source": "specification/columns/skupricedetails.md"},
    {"kind": "not_null_when", "column": "SkuId", "when": UC, "unless": NOT_CORR, "source": "specification/columns/skuid.md"},
    {"kind": "not_null_when", "column": "SkuPriceId", "when": UC, "unless": NOT_CORR, "source": "specification/columns/skupriceid.md"},
    {"kind": "not_null_when", "column": "PricingQuantity", "when": UC, "unless": NOT_CORR, "source": "specification/columns/pricingquantity.md"},
    {"kind": "not_null_when", "column": "ConsumedQuantity", "when": {"ChargeCategory": ["Usage"]}, "unless": NOT_CORR, "source": "specification/columns/consumedquantity.md"},
    {"kind": "null_when", "column": "ConsumedQuantity", "when": {"ChargeCategory": ["Purchase", "Tax", "Credit", "Adjustment"]}, "source": "specification/columns/consumedquantity.md"},
    {"kind": "null_when", "column": "SkuId", "when": {"ChargeCategory": ["Tax"]}, "source": "specification/columns/skuid.md"},
    {"kind": "null_when", "column": "PricingQuantity", "when": {"ChargeCategory": ["Tax"]}, "source": "specification/columns/pricingquantity.md"},
    {"kind": "equals_when_null", "column": "ListCost", "equals": "BilledCost", "when_null": "ListUnitPrice", "source": "specification/columns/listcost.md"},
    {"kind": "equals_when_null", "column": "ContractedCost", "equals": "BilledCost", "when_null": "ContractedUnitPrice", "source": "specification/columns/contractedcost.md"},
    {"kind": "not_value_when", "column": "ChargeFrequency", "value": "Usage-Based", "when": {"ChargeCategory": ["Purchase"]}, "source": "specification/columns/chargefrequency.md"},
    {"kind": "before", "first": "BillingPeriodStart", "then": "BillingPeriodEnd", "source": "specification/columns/billingperiodend.md"},
    {"kind": "before", "first": "ChargePeriodStart", "then": "ChargePeriodEnd", "source": "specification/columns/chargeperiodend.md"},
    {"kind": "custom_keys_prefixed", "column": "SkuPriceDetails", "prefix": "x_", "source": "specification/columns/skupricedetails.md"},
    {"kind": "custom_columns_prefixed", "prefix": "x_", "source": "specification/attributes/column_handling.md"},
    {"kind": "focus_columns_first", "source": "specification/attributes/column_handling.md"},
    {"kind": "numeric_format", "data_type": "Decimal", "source": "specification/attributes/numeric_format.md"},
    {"kind": "datetime_format", "data_type": "Date/Time", "pattern": "YYYY-MM-DDTHH:mm:ssZ", "source": "specification/attributes/datetime_format.md"},
    {"kind": "currency_format", "columns": ["BillingCurrency"], "source": "specification/attributes/currency_format.md"},
    {"kind": "subcategory_parent", "column": "ServiceSubcategory", "parent": "ServiceCategory", "source": "specification/columns/servicesubcategory.md"},
    {"kind": "no_empty_strings", "source": "specification/attributes/null_handling.md"},
]


def column(path: Path) -> dict[str, Any]:
    text = path.read_text()
    found = re.search(r"## Column ID\s+(\S+)", text)
    block = re.search(r"## Content [Cc]onstraints(.*?)(?:\n## |\Z)", text, re.S)
    assert found and block, path
    constraints = {}
    for line in block.group(1).splitlines():
        m = re.match(r"\|\s*(Column type|Feature level|Allows nulls|Data type|Value format|Number range)\s*\|"
                     r"\s*(.*?)\s*\|\s*$", line)
        if m:
            constraints[m.group(1)] = re.sub(r"\[(.*?)\]\(.*?\)", r"\1", m.group(2)).replace("\\<", "<").strip()
    entry: dict[str, Any] = {
        "column": found.group(1), "source": f"specification/columns/{path.name}",
        "feature_level": constraints["Feature level"], "allows_nulls": constraints["Allows nulls"] == "True",
        "data_type": constraints["Data type"], "value_format": constraints.get("Value format")}
    parts = re.split(r"[Aa]llowed [Vv]alues:", block.group(1))
    if len(parts) > 1:
        rows = [line for line in parts[-1].splitlines() if line.startswith("|")][2:]
        cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in rows]
        entry["allowed_values"] = ([{"category": c[0], "value": c[1]} for c in cells]
                                   if entry["column"] == "ServiceSubcategory" else [c[0] for c in cells])
    return entry


def main(spec: Path) -> None:
    columns = [column(p) for p in sorted((spec / "columns").glob("*.md"))]
    out = {"spec": "FOCUS 1.2", "repository": "FinOps-Open-Cost-and-Usage-Spec/FOCUS_Spec", "tag": "v1.2",
           "commit": "7296e3146fb931ee32b6496fa6e4200e7f4384f7",
           "derived_from": "each specification/columns/*.md: its Column ID, its Content constraints table (Feature "
                           "level, Allows nulls, Data type, Value format) and its Allowed values table; `rules`: the "
                           "requirement bullets of the file each names, in a checkable form",
           "columns": columns, "rules": RULES}
    OUT.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
