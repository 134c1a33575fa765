"""Run every benchmark under bench/ in turn and print their figures (``make bench``).

Each script is bounded and sends traffic only to 127.0.0.1; pass names to run a subset:
``python bench/run_all.py limiter_bench mock_bench``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def scripts(names: list[str]) -> list[Path]:
    me = Path(__file__).name
    found = sorted(p for p in HERE.glob("*.py") if p.name != me and not p.name.startswith("_"))
    if names:
        found = [p for p in found if p.stem in names]
    return found


def main() -> int:
    failed = []
    for script in scripts(sys.argv[1:]):
        print(f"\n=== {script.stem} ===", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, str(script)], cwd=HERE.parent)
        print(f"--- {script.stem}: exit {code} in {time.monotonic() - started:.0f}s", flush=True)
        if code:
            failed.append(script.stem)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
