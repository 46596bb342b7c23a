"""A tool plug-in as a third party ships one: a Python tool registered under ``coordlab.tools``."""

from __future__ import annotations

from typing import Any

from coordlab.tasks.tools import ToolError, python_tool


@python_tool("vendor_credit", "The credit a vendor has left: its limit minus its open balance.",
             sections=("vendors",), vendor={"type": "string", "description": "Vendor name"})
def vendor_credit(world: Any, vendor: str) -> dict[str, Any]:
    vendors = world.section("vendors")
    if vendor not in vendors:
        raise ToolError(f"vendor_credit: no vendor {vendor!r}")
    record = vendors[vendor]
    return {"vendor": vendor, "remaining": round(record["limit"] - record["open_balance"], 2)}
