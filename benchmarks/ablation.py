"""Ablation at equal training budget, scored on both evaluation families (issue 20).

    # one arm (same data, iterations, batch, patch, width, lr and seed for every arm)
    python benchmarks/ablation.py train --arm windows+batchnorm+fat --data PREPARED --out runs/ablation \
        --device cuda --iterations 1500 --batch-size 8
    # score checkpoints on cases generated in memory (independent and held-out families)
    python benchmarks/ablation.py evaluate --checkpoint runs/ablation/v02-design ... --json ablation.json
    # the docs/model.md table from one or more JSON files
    python benchmarks/ablation.py table ablation.json

Arms change one thing at a time, from model 0.2's design to the new one: the CT input (one
linear channel -> four windows), the normalisation (GroupNorm -> BatchNorm with running
statistics) and the MR target (per-case percentiles -> anchored on fat); plus the regression UNet
and the plain DDPM with the new design, at a matched parameter count (the baselines of the
paper's comparison). Evaluation cases come from generators no training case comes from:
``independent`` (seeds 5000+) and ``heldout`` (seeds 9000+), one case per kind and index. The
bundled-model CI test uses other seeds (7100+), so nothing here tunes what it checks.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ct2mri_node.training.families import EVALUATION_SEEDS

ARMS: dict[str, dict[str, str]] = {
    "v02-design": {"arch": "enhanced", "ct_input": "linear", "norm": "group", "mr_norm": "percentile"},
    "windows": {"arch": "enhanced", "ct_input": "windows", "norm": "group", "mr_norm": "percentile"},
    "windows+batchnorm": {"arch": "enhanced", "ct_input": "windows", "norm": "batch", "mr_norm": "percentile"},
    "windows+batchnorm+fat": {"arch": "enhanced", "ct_input": "windows", "norm": "batch", "mr_norm": "fat"},
    "unet": {"arch": "unet", "ct_input": "windows", "norm": "batch", "mr_norm": "fat"},
    "ddpm": {"arch": "ddpm", "ct_input": "windows", "norm": "batch", "mr_norm": "fat"},
}


def train_arm(args: argparse.Namespace) -> int:
    import torch

    from ct2mri_node.training.train import TrainRequest, run_training

    if args.threads:
        torch.set_num_threads(args.threads)
    arm = ARMS[args.arm]
    out = Path(args.out) / args.arm
    command = (f"python benchmarks/ablation.py train --arm {args.arm} --data {args.data} --out {args.out} "
               f"--device {args.device} --iterations {args.iterations} --batch-size {args.batch_size} "
               f"--patch {args.patch} --base-channels {args.base_channels} --lr {args.lr} --seed {args.seed}"
               f"{f' --threads {args.threads}' if args.threads else ''}")
    request = TrainRequest(data=Path(args.data), out=out, arch=arm["arch"], ct_input=arm["ct_input"],
                           norm=arm["norm"], mr_norm=arm["mr_norm"], iterations=args.iterations,
                           batch_size=args.batch_size, patch=args.patch, base_channels=args.base_channels,
                           lr=args.lr, seed=args.seed, device=args.device, val_every=max(1, args.iterations // 5),
                           name=f"ablation-{args.arm}", command=command)
    start = time.perf_counter()
    _, outcome = run_training(request)
    print(f"{args.arm}: {outcome.iterations} iterations in {time.perf_counter() - start:.0f} s, "
          f"validation {outcome.val_losses[-1][1] if outcome.val_losses else float('nan'):.4f}", flush=True)
    return 0


def evaluate_checkpoints(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from ct2mri_node.model.translator import TranslationSettings, Translator
    from ct2mri_node.training.evaluate import evaluate_case
    from ct2mri_node.training.families import family

    results: dict[str, Any] = {}
    for checkpoint in args.checkpoint:
        translator = Translator(checkpoint, TranslationSettings(device=args.device, steps=args.steps, t0=args.t0))
        rows = []
        for name, first_seed in EVALUATION_SEEDS.items():
            module = family(name)
            for index in range(args.cases):
                for kind in module.KINDS:
                    case = module.generate_case(kind, first_seed + index, name=f"{name}_{index}_{kind}")
                    montage = Path(args.montage_dir) / Path(checkpoint).name if args.montage_dir else None
                    result = evaluate_case(translator, case, montage, (case.labels, case.label_names))
                    rows.append({"family": name, "kind": kind, **asdict(result)})
                    print(f"{Path(checkpoint).name:24} {result.name:28} T1w {_t1w(result.t1w)} r {result.correlation:.3f} "
                          f"unif {_num((result.uniformity or {}).get('min'))} seam {_num(result.seam_ratio)} "
                          f"SSIM {result.ssim:.3f} MAE {result.mae:.4f} tex {_num((result.texture or {}).get('spectrum'))} "
                          f"{result.seconds:.0f} s "
                          f"failed {(result.t1w or {}).get('failed')}", flush=True)
        results[Path(checkpoint).name] = {"checkpoint": str(checkpoint), "model": asdict(translator.model_info),
                                          "settings": asdict(translator.settings), "cases": rows}
    Path(args.json).write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(format_rows(results))
    return 0


def _t1w(t1w: dict[str, Any] | None) -> str:
    return "-" if not t1w else f"{t1w['held']}/{t1w['total']}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per family: cases passing every T1w check, mean and lowest r, lowest uniformity, highest seam ratio."""
    out: dict[str, Any] = {}
    for name in EVALUATION_SEEDS:
        mine = [r for r in rows if r["family"] == name]
        if not mine:
            continue
        uniform = [r["uniformity"]["min"] for r in mine if r.get("uniformity") and r["uniformity"].get("min") is not None]
        seams = [r["seam_ratio"] for r in mine if r.get("seam_ratio") is not None]
        out[name] = {
            "all_t1w": sum(bool(r["t1w"] and r["t1w"]["all_held"]) for r in mine), "cases": len(mine),
            "r_mean": sum(r["correlation"] for r in mine) / len(mine), "r_min": min(r["correlation"] for r in mine),
            "uniformity_min": min(uniform) if uniform else None, "seam_max": max(seams) if seams else None,
            "ssim": sum(r["ssim"] for r in mine) / len(mine),
            "mae": sum(r["mae"] for r in mine) / len(mine),
            "texture_spectrum": _mean_of([(r.get("texture") or {}).get("spectrum") for r in mine]),
            "texture_gradient": _mean_of([(r.get("texture") or {}).get("gradient") for r in mine]),
            "seconds": sum(r["seconds"] for r in mine) / len(mine),
        }
    return out


def _mean_of(values: list[float | None]) -> float | None:
    """The mean of the values that are there (None when none is: JSON from before the texture measure)."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def format_rows(results: dict[str, Any]) -> str:
    lines = ["| arm | family | every T1w check | r mean (min) | uniformity min | seam ratio max | SSIM | texture |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for arm, entry in results.items():
        for name, s in summarise(entry["cases"]).items():
            lines.append(f"| {arm} | {name} | {s['all_t1w']}/{s['cases']} | {s['r_mean']:.2f} ({s['r_min']:.2f}) | "
                         f"{_num(s['uniformity_min'])} | {_num(s['seam_max'])} | {s['ssim']:.3f} | "
                         f"{_num(s.get('texture_spectrum'))} |")
    return "\n".join(lines)


def record_in_card(args: argparse.Namespace) -> int:
    """Write one checkpoint's evaluation summary (from ``evaluate``'s JSON) into its card.json."""
    from ct2mri_node.model.checkpoint import read_card, write_card
    from ct2mri_node.model.translator import TranslationSettings

    directory = Path(args.checkpoint)
    entry = json.loads(Path(args.json).read_text())[directory.name]
    card = read_card(directory)
    evaluation = {}
    for name, s in summarise(entry["cases"]).items():
        evaluation[name] = {
            "data": f"{s['cases']} cases of the {name} family (evaluation only), seeds {EVALUATION_SEEDS[name]}+, "
                    "generated in memory by benchmarks/ablation.py evaluate",
            "t1w_all_held": f"{s['all_t1w']}/{s['cases']}", "correlation_mean": round(s["r_mean"], 4),
            "correlation_min": round(s["r_min"], 4), "uniformity_min": s["uniformity_min"],
            "seam_ratio_max": s["seam_max"], "ssim_mean": round(s["ssim"], 4),
        }
    evaluation["settings"] = ("the card's defaults (TranslationSettings(): its sampler and steps), seed 0, "
                              f"sliding-window overlap {TranslationSettings().overlap}")
    card.evaluation = evaluation
    write_card(directory, card)
    print(json.dumps(evaluation, indent=2))
    return 0


def table(args: argparse.Namespace) -> int:
    results: dict[str, Any] = {}
    for path in args.json:
        results.update(json.loads(Path(path).read_text()))
    print(format_rows(results))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("--arm", required=True, choices=tuple(ARMS))
    t.add_argument("--data", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--device", default="auto")
    t.add_argument("--iterations", type=int, default=1500)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--patch", type=int, default=32)
    t.add_argument("--base-channels", type=int, default=16)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    t.set_defaults(func=train_arm)
    e = sub.add_parser("evaluate")
    e.add_argument("--checkpoint", action="append", required=True)
    e.add_argument("--cases", type=int, default=2, help="cases per kind and family (default 2)")
    e.add_argument("--device", default="auto")
    e.add_argument("--steps", type=int, help="network evaluations per patch (default: each card's)")
    e.add_argument("--t0", type=int, help="refine sampler's t0 (default: each card's)")
    e.add_argument("--json", required=True)
    e.add_argument("--montage-dir")
    e.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    e.set_defaults(func=evaluate_checkpoints)
    c = sub.add_parser("card", help="write a checkpoint's evaluation summary into its card.json")
    c.add_argument("--checkpoint", required=True)
    c.add_argument("--json", required=True)
    c.set_defaults(func=record_in_card)
    s = sub.add_parser("table")
    s.add_argument("json", nargs="+")
    s.set_defaults(func=table)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
