"""How fast ``bastion scan`` reads a tree: 10,000 generated files (source-like text, a few binaries, a few
planted credentials) in a temp dir, scanned through the same functions the CLI calls. Not run by CI.

    python bench/scan.py                  # 10,000 files, the working tree
    python bench/scan.py --files 50000    # a larger tree
    python bench/scan.py --git            # also commit them (in 10 commits) and time --git

The tree is written once, then scanned ``--rounds`` times; the best and the median time are printed with
the findings count, which must equal the number of planted credentials.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bastion.adapters.scan import scan_git_history, scan_tree
from bastion.core.identity import BASE62, format_api_key

WORDS = [
    *("def", "return", "import", "class", "self", "value", "config", "route", "request", "response"),
    *("token", "account", "message", "status", "error", "handler", "limit", "service", "upstream"),
    *("consumer", "scope", "event", "alert", "sink", "path", "method", "header", "body"),
]


def _line(rng: random.Random) -> str:
    words = rng.choices(WORDS, k=rng.randint(3, 12))
    return "    " * rng.randint(0, 3) + " ".join(words) + (" = " + str(rng.randint(0, 10**9)))


def _key(rng: random.Random) -> str:
    return format_api_key(
        "".join(rng.choice(BASE62) for _ in range(12)), "".join(rng.choice(BASE62) for _ in range(33))
    )


def build(root: Path, files: int, seed: int = 7) -> int:
    """Write the tree; return how many credentials were planted."""
    rng = random.Random(seed)
    planted = 0
    for i in range(files):
        d = root / f"pkg{i % 100:02d}" / f"mod{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        if i % 500 == 13:
            (d / f"blob{i}.bin").write_bytes(b"\0" + rng.randbytes(4096))
            continue
        lines = [_line(rng) for _ in range(rng.randint(20, 200))]
        if i % 1000 == 7:
            lines.insert(rng.randrange(len(lines)), f"API_KEY = '{_key(rng)}'")
            planted += 1
        if i % 2500 == 11:
            lines.insert(rng.randrange(len(lines)), f"TWILIO_AUTH_TOKEN={rng.randbytes(16).hex()}")
            planted += 1
        (d / f"file{i}.py").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return planted


def _report(what: str, times: list[float], count: int) -> str:
    best, median = min(times), statistics.median(times)
    return f"{what}: {count} finding(s); best {best:.2f}s, median {median:.2f}s"


def _time(fn, rounds: int) -> tuple[list[float], int]:  # type: ignore[no-untyped-def]
    times, count = [], 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        count = len(fn())
        times.append(time.perf_counter() - t0)
    return times, count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--git", action="store_true", help="also time the history scan")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bastion-scan-bench-") as tmp:
        root = Path(tmp) / "tree"
        t0 = time.perf_counter()
        planted = build(root, args.files)
        print(f"built {args.files} files ({planted} credentials planted) in {time.perf_counter() - t0:.1f}s")
        times, count = _time(lambda: scan_tree(root), args.rounds)
        print(_report("working tree", times, count) + f" ({args.files / min(times):,.0f} files/s)")
        if count != planted:
            print(f"MISMATCH: planted {planted}, found {count}", file=sys.stderr)
            sys.exit(1)
        if args.git:
            env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
            git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com", "-C", str(root)]
            subprocess.run([*git, "init", "-q"], check=True, env=env)
            subprocess.run([*git, "add", "."], check=True, env=env)
            subprocess.run([*git, "commit", "-q", "-m", "tree"], check=True, env=env)
            times, count = _time(lambda: scan_git_history(root), args.rounds)
            print(_report("history", times, count))


if __name__ == "__main__":
    main()
