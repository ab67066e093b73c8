"""Age and sex values from metadata CSVs and DICOM tags: what is standard is parsed, the rest is named.

Pure functions returning (value, issue): the issue (`unparsed`, `implausible`, `unknown_code`) is
counted per build and reported, so a column of codes the builder does not understand never turns
silently into nulls or into extra classes.
"""

from __future__ import annotations

import re

MAX_AGE = 125  # years; above (or below 0) a value is a typo or a code, not an age
_AGE = re.compile(r"^([+-]?\d+(?:\.\d+)?)\s*([A-Z]*)\.?$")
_UNITS = {1.0: ("", "Y", "YR", "YRS", "YEAR", "YEARS", "YO", "A"),
          1 / 12: ("M", "MO", "MOS", "MONTH", "MONTHS"),
          7 / 365.25: ("W", "WK", "WKS", "WEEK", "WEEKS"),
          1 / 365.25: ("D", "DAY", "DAYS")}
_UNIT = {name: scale for scale, names in _UNITS.items() for name in names}
# standard codes (DICOM PatientSex: M, F, O) and their spelled-out forms; U/unknown is a known null
_SEX = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F", "O": "O", "OTHER": "O"}
_SEX_UNKNOWN = {"U", "UNKNOWN", "NA", "N/A", "?", "-"}


def parse_age(text) -> float | None:
    """DICOM AS ('065Y', '018M', '003W', '010D'), a plain number ('45', '45.5', years) or a number
    with a unit ('45 years', '6 months', '45y') -> years; None when empty or not one of those forms."""
    t = str(text).strip().upper()
    m = _AGE.match(t)
    if not m or m.group(2) not in _UNIT:
        return None
    years = float(m.group(1)) * _UNIT[m.group(2)]
    return round(years, 2) if years != int(years) else int(years)


def age_value(text) -> tuple[float | None, str | None]:
    """(age in years or None, issue or None) for a raw value; empty is simply unknown."""
    if text is None or not str(text).strip():
        return None, None
    age = parse_age(text)
    if age is None:
        return None, "unparsed"
    if not 0 <= age <= MAX_AGE:
        return None, "implausible"
    return age, None


def sex_value(text, sex_map: dict[str, str] | None = None) -> tuple[str | None, str | None]:
    """(M / F / O or None, issue or None); `sex_map` (from --sex-map, codes upper-cased) goes first."""
    if text is None:
        return None, None
    t = str(text).strip().upper()
    if not t:
        return None, None
    if sex_map and t in sex_map:
        v = sex_map[t]
        return (None if v == "U" else v), None
    if t in _SEX:
        return _SEX[t], None
    if t in _SEX_UNKNOWN:
        return None, None
    return None, "unknown_code"
