"""Every leaf that differs between two runs' final_info.json files, leaving out what differs between
any two runs (the SAE's unique name, paths, eval ids, timestamps, seconds, cache hits): the check
that a change to the harness's plumbing left every number as it was. Not a test.

    python benchmarks/compare_info.py run_before/final_info.json run_after/final_info.json

Prints one line per differing leaf (path | before | after) and a count; exit status 1 if any differ."""

import json
import math
import sys

SET_ASIDE = {"seconds", "stage_seconds", "eval_id", "datetime_epoch_millis", "entry", "cache", "cache_hit", "out_dir", "created"}
"""Keys whose values differ between any two runs of the same SAE and are not compared."""


def differing(a, b, path=()) -> list[tuple[str, object, object]]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            d
            for k in sorted(set(a) | set(b))
            if k not in SET_ASIDE
            for d in differing(a.get(k, "<absent>"), b.get(k, "<absent>"), (*path, k))
        ]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differing(x, y, (*path, str(i)))]
    same = a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
    return [] if same else [("/".join(path), a, b)]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[3].strip(), file=sys.stderr)
        return 2
    before, after = (json.loads(open(path).read()) for path in argv)
    found = differing(before, after)
    for path, a, b in found:
        print(f"{path} | {str(a)[:80]} | {str(b)[:80]}")
    print(f"{len(found)} differing leaves (set aside: {', '.join(sorted(SET_ASIDE))})")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
