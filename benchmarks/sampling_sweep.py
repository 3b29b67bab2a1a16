"""Does a denoising path earn its place over the one-pass estimate? (issue 23, item 1)

    # one JSON per setting: the bundled model on 2 cases per kind of each evaluation family
    python benchmarks/ablation.py evaluate --checkpoint bundled --cases 2 --device cpu --threads 1 \
        --steps 1 --json sweep/est.json
    python benchmarks/ablation.py evaluate ... --steps 2 --t0 50 --json sweep/t50s2.json   # and so on
    # the table and the bar, the first JSON being the estimate
    python benchmarks/sampling_sweep.py sweep/est.json sweep/t*.json

Per setting and family: mean SSIM, MAE, r, the cases where every T1w check holds, the checks that
fail where the estimate's hold (new failures), the texture distances (spectrum, gradient; lower is
closer to the true MR) and seconds per case. The bar (issue 23): SSIM within 0.01 and MAE within
0.005 of the estimate on both families, no T1w check lost, and the spectrum distance lower than the
estimate's on the held-out family (the one whose true MR has texture).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

SSIM_MARGIN, MAE_MARGIN = 0.01, 0.005
TEXTURED_FAMILY = "heldout"


def label(entry: dict[str, Any]) -> str:
    s = entry.get("settings") or {}
    return "estimate" if s.get("steps") == 1 else f"t0 {s.get('t0')}, {s.get('steps')} evals"


def _mean(rows: list[dict[str, Any]], key: str, sub: str | None = None) -> float:
    values = [(r[key] or {}).get(sub) if sub else r[key] for r in rows]
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else float("nan")


def summary(entry: dict[str, Any], base: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per family: the means, and the T1w checks lost against ``base`` (the estimate), case by case."""
    failed = {r["name"]: set(r["t1w"]["failed"]) for r in base["cases"] if r.get("t1w")}
    out: dict[str, dict[str, Any]] = {}
    for family in dict.fromkeys(r["family"] for r in entry["cases"]):
        rows = [r for r in entry["cases"] if r["family"] == family]
        lost = sorted(f"{r['name']}: {c}" for r in rows if r.get("t1w")
                      for c in set(r["t1w"]["failed"]) - failed.get(r["name"], set()))
        out[family] = {"ssim": _mean(rows, "ssim"), "mae": _mean(rows, "mae"), "r": _mean(rows, "correlation"),
                       "all_t1w": sum(bool(r.get("t1w") and r["t1w"]["all_held"]) for r in rows), "cases": len(rows),
                       "lost": lost, "spectrum": _mean(rows, "texture", "spectrum"),
                       "gradient": _mean(rows, "texture", "gradient"), "seconds": _mean(rows, "seconds")}
    return out


def verdict(mine: dict[str, dict[str, Any]], base: dict[str, dict[str, Any]]) -> list[str]:
    """Why a setting misses the bar (empty: it meets it)."""
    misses = []
    for family, s in mine.items():
        b = base[family]
        if s["ssim"] < b["ssim"] - SSIM_MARGIN:
            misses.append(f"{family} SSIM {s['ssim'] - b['ssim']:+.3f}")
        if s["mae"] > b["mae"] + MAE_MARGIN:
            misses.append(f"{family} MAE {s['mae'] - b['mae']:+.4f}")
        if s["lost"]:
            misses.append(f"{family} loses {len(s['lost'])} T1w check(s)")
    if TEXTURED_FAMILY in mine and not mine[TEXTURED_FAMILY]["spectrum"] < base[TEXTURED_FAMILY]["spectrum"]:
        misses.append(f"{TEXTURED_FAMILY} texture not closer")
    return misses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+", type=Path, help="ablation.py evaluate JSON files, the estimate's first")
    args = parser.parse_args(argv)
    entries = [next(iter(json.loads(p.read_text()).values())) for p in args.json]
    base = summary(entries[0], entries[0])
    print("| sampling | family | SSIM | MAE | r | every T1w check | T1w checks lost | texture: spectrum | "
          "gradient | s / case |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    verdicts = []
    for entry in entries:
        mine = summary(entry, entries[0])
        for family, s in mine.items():
            print(f"| {label(entry)} | {family} | {s['ssim']:.3f} | {s['mae']:.4f} | {s['r']:.3f} | "
                  f"{s['all_t1w']}/{s['cases']} | {len(s['lost'])} | {s['spectrum']:.3f} | {s['gradient']:.4f} | "
                  f"{s['seconds']:.0f} |")
        verdicts.append((label(entry), verdict(mine, base)))
    print()
    for name, misses in verdicts[1:]:
        print(f"{name}: {'meets the bar' if not misses else 'misses the bar: ' + '; '.join(misses)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
