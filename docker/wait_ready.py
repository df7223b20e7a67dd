"""Wait until a divreward service answers ``GET /readyz`` with 200 (every model
deployment answered a real call), or fail after a timeout.

    python docker/wait_ready.py http://head:8000 --timeout 600

Used by docker-compose.yml's deploy services after ``serve deploy``; standard library
only, so it runs in any image.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url", help="base URL of the reward app, e.g. http://head:8000")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds (default 600)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between tries")
    args = p.parse_args(argv)
    url = args.url.rstrip("/") + "/readyz"
    deadline = time.monotonic() + args.timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=min(30.0, args.timeout)) as r:
                if r.status == 200:
                    print(f"wait_ready: {url} is ready", flush=True)
                    return 0
                last = f"HTTP {r.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read()[:300]!r}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(args.interval)
    print(f"wait_ready: {url} not ready after {args.timeout:g}s ({last})", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
