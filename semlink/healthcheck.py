"""``python -m semlink.healthcheck URL [KEY=VALUE ...]``: the containers' ``HEALTHCHECK``.

Exits 0 when ``URL`` answers 200 and its JSON body has every ``KEY=VALUE`` given, 1 otherwise,
printing why. Standard library only: the images carry no curl.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request


def check(url: str, expect: dict[str, str], timeout_s: float = 2.0) -> str | None:
    """``None`` when healthy, else the reason."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            body = json.loads(resp.read() or b"{}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"{url}: {exc}"
    for key, want in expect.items():
        got = body.get(key)
        if str(got).lower() != want.lower():
            return f"{url}: {key} is {got!r}, want {want!r}"
    return None


def main(argv: list[str]) -> int:
    if not argv or any("=" not in a for a in argv[1:]):
        print("usage: python -m semlink.healthcheck URL [KEY=VALUE ...]", file=sys.stderr)
        return 2
    reason = check(argv[0], dict(a.split("=", 1) for a in argv[1:]))
    if reason:
        print(f"unhealthy: {reason}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
