"""Compare checkpoints on held-out cases with ``ct2mri-node evaluate``; print a Markdown table.

Each checkpoint is evaluated in its own process (``ct2mri-node evaluate``), so that the peak
memory in the table is that model's alone. Columns: SSIM, PSNR, MAE (means over the cases,
SynthRAD definitions, see ``evaluate``), network evaluations per volume, sampling seconds per
volume and peak process memory. With ``--record-in-card`` the means are also written into each
checkpoint's ``card.json`` under ``evaluation`` (the weights, and so the weight hash, are untouched).

    python benchmarks/compare_models.py --data HELDOUT --out runs/eval \
        enhanced=runs/enhanced ddpm@10=runs/ddpm unet=runs/unet

``LABEL@STEPS`` sets that model's network evaluations per patch (default: its card's).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from safetensors import safe_open

CLI = [sys.executable, "-m", "ct2mri_node"]


def evaluate(label: str, checkpoint: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run ``ct2mri-node evaluate`` for one checkpoint; return its JSON report."""
    label, _, steps = label.partition("@")
    report = args.out / f"{label}.json"
    cmd = [*CLI, "--log-level", "WARNING", "evaluate", "--data", str(args.data), "--checkpoint", str(checkpoint),
           "--seed", str(args.seed), "--device", args.device, "--samples", str(args.samples),
           "--json", str(report), "--montage-dir", str(args.out / f"{label}-montages")]
    if steps or args.steps:
        cmd += ["--steps", steps or str(args.steps)]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    if args.reuse and report.is_file():  # an earlier run of the same comparison (e.g. in another shell)
        return json.loads(report.read_text())
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return json.loads(report.read_text())


def table(reports: dict[str, dict[str, Any]]) -> str:
    """The comparison as a Markdown table."""
    lines = ["| model | arch | params | sampler, evals / patch | SSIM | PSNR (dB) | MAE | tissue order | r (body) "
             "| network evals / volume | s / volume | peak RSS (MiB) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, rep in reports.items():
        mean, model, settings = rep["mean"], rep["model"], rep["settings"]
        rss = rep.get("peak_memory", {}).get("process_max_rss_bytes") or 0
        params = rep.get("parameters", "")
        order = f"{mean['tissue_order']:.3f}" if "tissue_order" in mean else "-"
        lines.append(
            f"| {label} | {model['architecture']} | {params} | {settings.get('sampler')} {settings.get('steps')}"
            f"{' x' + str(settings.get('samples')) if settings.get('samples', 1) > 1 else ''} | {mean['ssim']:.3f} | "
            f"{mean['psnr']:.2f} | {mean['mae']:.4f} | {order} | {mean.get('correlation', float('nan')):.3f} | "
            f"{mean['network_evaluations']:.0f} | {mean['seconds']:.1f} | {rss / 2**20:.0f} |"
        )
    return "\n".join(lines)


def parameter_count(checkpoint: Path) -> int:
    """Number of weights in the checkpoint (tensor shapes from the safetensors header, no torch needed)."""
    with safe_open(str(checkpoint / "model.safetensors"), framework="numpy") as weights:
        return sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())


def record_in_card(checkpoint: Path, rep: dict[str, Any], data: Path) -> None:
    """Write the mean metrics into the checkpoint's card.json (atomically)."""
    card_path = checkpoint / "card.json"
    card = json.loads(card_path.read_text())
    card["evaluation"] = {
        "data": f"{len(rep['cases'])} held-out synthetic cases ({data.name}, a generator no training case comes from), "
                "not patients",
        "sampler": rep["settings"].get("sampler"), "steps": rep["settings"].get("steps"),
        "samples": rep["settings"].get("samples", 1), "seed": rep["settings"].get("seed"),
        **{k: round(float(v), 4) for k, v in rep["mean"].items()},
        "metric_definition": rep.get("metric_definition", ""),
    }
    tmp = card_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    os.replace(tmp, card_path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="held-out cases (SynthRAD layout)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON reports and montages")
    parser.add_argument("--steps", type=int, default=0, help="evaluations per patch for every model "
                        "(default: each card's own; LABEL@STEPS=DIR sets one model's)")
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--record-in-card", action="store_true", help="write the means into each card.json")
    parser.add_argument("--reuse", action="store_true", help="use a model's report already in --out instead of evaluating again")
    parser.add_argument("models", nargs="+", help="LABEL=CHECKPOINT_DIR")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    reports: dict[str, dict[str, Any]] = {}
    for item in args.models:
        label, _, path = item.partition("=")
        if not path:
            parser.error(f"{item!r}: expected LABEL=CHECKPOINT_DIR")
        checkpoint = Path(path)
        rep = evaluate(label, checkpoint, args)
        label = label.partition("@")[0]
        reports[label] = rep
        reports[label]["parameters"] = f"{parameter_count(checkpoint) / 1e6:.2f} M"
        if args.record_in_card:
            record_in_card(checkpoint, reports[label], args.data)
    print(table(reports))
    (args.out / "table.md").write_text(table(reports) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
