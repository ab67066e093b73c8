"""The GPU check's JSON document (schema, validation), its tables and its exit status.

    {"schema": "dinotrain-gpu-check/1", "ok": bool, "exit_status": int, "date": str, "elapsed_s": float,
     "machine": {...}, "params": {...},
     "checks": [{"section", "name", "status", "value", "tolerance", "unit", "detail"}],
     "measurements": [{"section", "case", "values": {name: number | str | bool | None}}]}

A check compares one number with a tolerance (`status` ok | mismatch), or records why it
could not (error | skipped). Measurements are figures without a verdict (images/s, MFU, peak
memory). Exit status: 1 on any mismatch, 3 on an error and no mismatch, else 0.
"""

from __future__ import annotations

import math
from typing import Any

SCHEMA = "dinotrain-gpu-check/1"
STATUSES = ("ok", "mismatch", "error", "skipped")
EXIT_OK, EXIT_MISMATCH, EXIT_UNAVAILABLE, EXIT_ERROR = 0, 1, 2, 3

_TOP = {"schema": str, "ok": bool, "exit_status": int, "date": str, "elapsed_s": (int, float), "machine": dict,
        "params": dict, "checks": list, "measurements": list}
_CHECK = {"section": str, "name": str, "status": str, "value": (int, float, type(None)),
          "tolerance": (int, float, type(None)), "unit": str, "detail": str}
_MEASUREMENT = {"section": str, "case": str, "values": dict}
_VALUE = (int, float, str, bool, type(None), list)


def check(section: str, name: str, value: float | None, tolerance: float, unit: str = "", detail: str = "") -> dict:
    """A verdict: ok when value <= tolerance; NaN, inf and a missing value are mismatches."""
    good = value is not None and math.isfinite(value) and value <= tolerance
    return {"section": section, "name": name, "status": "ok" if good else "mismatch",
            "value": None if value is None else float(value), "tolerance": float(tolerance), "unit": unit,
            "detail": detail}


def note(section: str, name: str, status: str, detail: str) -> dict:
    """A check that did not compare anything: status error or skipped, with the reason."""
    if status not in ("error", "skipped"):
        raise ValueError(f"note status {status!r}: use error or skipped")
    return {"section": section, "name": name, "status": status, "value": None, "tolerance": None, "unit": "",
            "detail": detail}


def measurement(section: str, case: str, **values: Any) -> dict:
    return {"section": section, "case": case, "values": values}


def exit_status(checks: list[dict]) -> int:
    statuses = {c.get("status") for c in checks}
    if "mismatch" in statuses:
        return EXIT_MISMATCH
    if "error" in statuses:
        return EXIT_ERROR
    return EXIT_OK


def _expect(where: str, obj: Any, fields: dict) -> list[str]:
    if not isinstance(obj, dict):
        return [f"{where}: expected an object, got {type(obj).__name__}"]
    problems = [f"{where}: missing '{k}'" for k in fields if k not in obj]
    for k, types in fields.items():
        if k in obj and not isinstance(obj[k], types) or (k in obj and types is int and isinstance(obj[k], bool)):
            problems.append(f"{where}.{k}: {type(obj[k]).__name__} is not {getattr(types, '__name__', types)}")
    return problems


def validate(doc: Any) -> list[str]:
    """Every way `doc` departs from the schema (an empty list when it conforms)."""
    problems = _expect("document", doc, _TOP)
    if not isinstance(doc, dict) or any(not isinstance(doc.get(k), _TOP[k]) for k in ("checks", "measurements")):
        return problems  # nothing more can be read
    if doc.get("schema") != SCHEMA:
        problems.append(f"document.schema: {doc['schema']!r} is not {SCHEMA!r}")
    for i, c in enumerate(doc["checks"]):
        problems += _expect(f"checks[{i}]", c, _CHECK)
        if isinstance(c, dict) and c.get("status") not in STATUSES:
            problems.append(f"checks[{i}].status: {c.get('status')!r} is not one of {', '.join(STATUSES)}")
    for i, m in enumerate(doc["measurements"]):
        problems += _expect(f"measurements[{i}]", m, _MEASUREMENT)
        if isinstance(m, dict) and isinstance(m.get("values"), dict):
            problems += [f"measurements[{i}].values.{k}: {type(v).__name__} is not a number, string, bool or list"
                         for k, v in m["values"].items() if not isinstance(v, _VALUE)]
    if any(not isinstance(c, dict) for c in doc["checks"]):
        return problems
    if doc.get("exit_status") != exit_status(doc["checks"]):
        problems.append(f"document.exit_status: {doc.get('exit_status')} but the checks give {exit_status(doc['checks'])}")
    if doc.get("ok") != (doc.get("exit_status") == EXIT_OK):
        problems.append("document.ok: disagrees with exit_status")
    return problems


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, list):
        return f"[{len(v)} values]"
    return "-" if v is None else str(v)


def tables(doc: dict) -> str:
    """Markdown: the checks, then one table per measured section (columns: the union of its values)."""
    lines = ["| section | check | value | tolerance | status | detail |", "|---|---|---|---|---|---|"]
    for c in doc["checks"]:
        lines.append(f"| {c['section']} | {c['name']} | {_fmt(c['value'])} {c['unit']} | {_fmt(c['tolerance'])} "
                     f"| **{c['status']}** | {c['detail']} |")
    sections: dict[str, list[dict]] = {}
    for m in doc["measurements"]:
        sections.setdefault(m["section"], []).append(m)
    for section, rows in sections.items():
        keys = [k for k in dict.fromkeys(k for r in rows for k in r["values"]) if not isinstance(rows[0]["values"].get(k), list)]
        lines += ["", f"**{section}**", "", "| case | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for r in rows:
            lines.append(f"| {r['case']} | " + " | ".join(_fmt(r["values"].get(k)) for k in keys) + " |")
    return "\n".join(lines)
