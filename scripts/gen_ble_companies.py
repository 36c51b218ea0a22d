"""Regenerate gateway/parsers/ble_companies.py from the bluetooth-numbers package.

    pip download --no-deps bluetooth-numbers==1.1.2 && unzip bluetooth_numbers-1.1.2-py3-none-any.whl
    python scripts/gen_ble_companies.py PATH_TO_UNPACKED_WHEEL > gateway/parsers/ble_companies.py

bluetooth-numbers (MIT, Koen Vervloesem) carries the Bluetooth SIG "Assigned Numbers: Company
Identifiers" list as a dict; the gateway ships a generated copy so the box needs no extra package.
"""

from __future__ import annotations

import sys

HEADER = '''"""Bluetooth SIG company identifiers -> names (generated; do not edit by hand).

Source: the Bluetooth SIG "Assigned Numbers: Company Identifiers" list as packaged in
bluetooth-numbers {version} (MIT licence, Koen Vervloesem), {count} entries. Regenerate with
``scripts/gen_ble_companies.py``. Names are kept as the SIG spells them.
"""

from __future__ import annotations

__all__ = ["COMPANY_TABLE_SOURCE", "company_name"]

COMPANY_TABLE_SOURCE = "Bluetooth SIG company identifiers via bluetooth-numbers {version}"

_RAW = """\\
'''

FOOTER = '''"""

_TABLE: dict[int, str] | None = None


def company_name(company_id: int) -> str | None:
    """The SIG-registered name of ``company_id`` (0-65535), or None when it is not assigned."""
    global _TABLE
    if _TABLE is None:
        table: dict[int, str] = {}
        for line in _RAW.splitlines():
            cid, _, name = line.partition(" ")
            table[int(cid, 16)] = name
        _TABLE = table
    return _TABLE.get(company_id)
'''


def main() -> int:
    sys.path.insert(0, sys.argv[1])
    import bluetooth_numbers
    from bluetooth_numbers import company

    version = getattr(bluetooth_numbers, "__version__", "1.1.2")
    items = sorted((int(k), str(v)) for k, v in dict(company).items() if 0 <= int(k) < 0xFFFF)
    out = [HEADER.format(version=version, count=len(items))]
    for cid, name in items:
        clean = " ".join(name.replace("\\", "/").replace('"""', "'").split())
        out.append(f"{cid:04x} {clean}\n")
    out.append(FOOTER)
    sys.stdout.write("".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
