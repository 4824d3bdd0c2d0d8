"""Run a Python script and record, per rank, which files under given directories it opens and lists.

    python -m lit_gpt.file_trace --out traces --under data/ --under out/ -- pretrain/tinyllama.py --config ...
    torchrun --nproc_per_node 16 -m lit_gpt.file_trace --out traces --under data/ -- pretrain/tinyllama.py ...

What a start-up costs a shared filesystem is what every rank reads from it: this counts it. Each process
writes ``OUT/rank-R.json`` at exit (R from the RANK variable a launcher sets, 0 without one): every
``open`` of a file under one of the directories with its size then (what reading it whole costs; a
memory-mapped shard counts whole too), and every directory listing there with its number of entries.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import runpy
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the directory for rank-R.json")
    parser.add_argument("--under", type=Path, action="append", required=True, help="a directory to watch")
    parser.add_argument("script", type=Path, help="the Python script to run, then its arguments")
    parser.add_argument("arguments", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    roots = tuple(str(path.resolve()) + os.sep for path in args.under)
    opened: list[dict] = []
    inside = False  # the hook's own listing raises an event too

    def watched(path: object) -> str | None:
        if not isinstance(path, (str, bytes, os.PathLike)):
            return None  # a file descriptor
        resolved = os.path.abspath(os.fsdecode(path))
        return resolved if (resolved + os.sep).startswith(roots) else None

    def record(event: str, event_args: tuple) -> None:
        nonlocal inside
        if inside:
            return
        inside = True
        try:
            if event == "open" and (path := watched(event_args[0])) and os.path.isfile(path):
                opened.append({"open": path, "bytes": os.path.getsize(path)})
            elif event in ("os.listdir", "os.scandir") and (path := watched(event_args[0] or ".")):
                opened.append({"list": path, "entries": len(os.listdir(path))})
        finally:
            inside = False

    def write() -> None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"rank-{os.environ.get('RANK', '0')}.json").write_text(json.dumps(opened))

    atexit.register(write)
    sys.argv = [str(args.script), *args.arguments]
    sys.path.insert(0, str(args.script.resolve().parent))
    sys.addaudithook(record)
    runpy.run_path(str(args.script), run_name="__main__")


if __name__ == "__main__":
    main()
