"""Quality against network evaluations: the default step count as a measured choice.

    .venv/bin/python benchmarks/steps_quality.py --checkpoint bundled --data HELDOUT \
        --steps 1,2,4,8,20 --reference-steps 41 --reference-cases 2

For every case of the held-out folder and every step count (network evaluations per patch and
sample: refine = the estimate plus steps-1 DDIM steps from t0), translate the CT and score it
against the true MR (SSIM, PSNR, MAE, tissue order, correlation: ``ct2mri-node evaluate``'s
definitions). On the first ``--reference-cases`` cases it also translates with
``--reference-steps`` (a long DDIM chain from t0, the closest to the full-length sampler that
fits on a CPU) and prints each step count's mean absolute difference from that reference
(both normalised like the metrics). Prints a Markdown table of means; seconds are wall time
per case on this machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="bundled")
    parser.add_argument("--data", type=Path, required=True, help="held-out cases (SynthRAD layout, with labels)")
    parser.add_argument("--steps", default="1,2,4,8,20")
    parser.add_argument("--reference-steps", type=int, default=41,
                        help="evaluations of the reference sample (may be one of --steps: then no extra run)")
    parser.add_argument("--reference-cases", type=int, default=2)
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write per-case numbers here")
    args = parser.parse_args(argv)

    from ct2mri_node.model.translator import TranslationSettings, Translator
    from ct2mri_node.training.metrics import compare, normalise
    from ct2mri_node.training.pairs import list_cases, load_case, load_labels
    from ct2mri_node.training.tissue_order import body_correlation, tissue_order

    counts = [int(s) for s in args.steps.split(",")]
    translators = {n: Translator(args.checkpoint, TranslationSettings(steps=n, samples=args.samples, device="cpu"))
                   for n in counts}
    # The reference is one of the step counts when it is in the list (no second run), else its own translator.
    reference = translators.get(args.reference_steps) or Translator(
        args.checkpoint, TranslationSettings(steps=args.reference_steps, device="cpu"))
    cases = list_cases(args.data)[: args.limit or None]
    rows: list[dict[str, object]] = []
    for index, case_dir in enumerate(cases):
        case, labels = load_case(case_dir), load_labels(case_dir)
        outputs: dict[int, tuple[np.ndarray, float]] = {}
        for n, translator in translators.items():
            start = time.perf_counter()
            outputs[n] = (translator.translate(case.ct, case.spacing).mr.astype(np.float32), time.perf_counter() - start)
        ref = None
        if index < args.reference_cases:
            ref_mr = outputs[args.reference_steps][0] if args.reference_steps in outputs else \
                reference.translate(case.ct, case.spacing).mr.astype(np.float32)
            ref = normalise(ref_mr, case.mask)
        for n, (mr, seconds) in outputs.items():
            scores = compare(case.mr, mr, case.mask)
            order = tissue_order(mr, *labels, case.mask)["score"] if labels else None
            row = {"case": case.name, "steps": n, "ssim": scores.ssim, "psnr": scores.psnr, "mae": scores.mae,
                   "tissue_order": order, "correlation": body_correlation(case.mr, mr, case.mask),
                   "seconds": seconds}
            if ref is not None:
                row["mad_vs_reference"] = float(np.mean(np.abs(normalise(mr, case.mask) - ref)[case.mask]))
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{translators[counts[0]].model_info.name}: {len(cases)} cases of {args.data}, "
          f"reference {args.reference_steps} evaluations on {min(args.reference_cases, len(cases))} case(s)\n")
    print("| evals / patch | SSIM | PSNR (dB) | MAE | tissue order | r (body) | |diff| vs reference | s / case |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for n in counts:
        mine = [r for r in rows if r["steps"] == n]
        mean = lambda key: float(np.mean([r[key] for r in mine if r.get(key) is not None]))  # noqa: E731
        has_ref = any("mad_vs_reference" in r for r in mine)
        print(f"| {n} | {mean('ssim'):.3f} | {mean('psnr'):.2f} | {mean('mae'):.4f} | {mean('tissue_order'):.3f} | "
              f"{mean('correlation'):.3f} | {mean('mad_vs_reference') if has_ref else float('nan'):.4f} | "
              f"{mean('seconds'):.1f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
