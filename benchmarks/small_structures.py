"""Size response of a model: fluid balls of 3-14 mm radius painted into the white matter of the
evaluation families' heads (and the muscle of their pelves); does the synthetic MR keep them dark?

    python benchmarks/small_structures.py --checkpoint ct2mri_node/model/bundled [--checkpoint runs/X] \
        [--cases 1] [--threads 2] [--json out.json] [--hu 8] [--noise-hu 5]

Per case and radius it prints the ball's core over its host tissue in the synthetic MR (1.0: the ball
is invisible), beside the same ratio of the case's own fluid (CSF or urine interior) to that tissue
in the true MR: the value a model that reads fluid from its CT gives at every size. Cases come from
the evaluation-only families (``independent`` seeds 5000+, ``heldout`` seeds 9000+), as in
benchmarks/ablation.py; the balls are placed by seed 0, so two checkpoints see the same volumes.
See ct2mri_node/training/size_response.py for why. ``--hu`` paints balls of another material (fat
-100, bone 700) and ``--noise-hu 0`` noise-free ones, to tell "cannot see small structures" from
"cannot see small fluid" and from "takes small dips for noise"; the true-ratio column is the
fluid's whatever ``--hu`` is.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ct2mri_node.training.families import EVALUATION_SEEDS
from ct2mri_node.training.size_response import FLUID_HU, FLUID_NOISE_HU

HOSTS: dict[str, tuple[str, str]] = {"small_head": ("white_matter", "csf"), "adult_head": ("white_matter", "csf"),
                                     "pelvis": ("muscle", "urine")}
RADII_MM: tuple[float, ...] = (3.0, 5.0, 7.0, 10.0, 14.0)


def true_ratio(case: Any, host: np.ndarray, fluid: str) -> float | None:
    """Median true MR over the case's fluid interior / over its host interior (None: no fluid)."""
    from ct2mri_node.training.tissue_order import erode

    ids = [value for value, name in case.label_names.items() if name == fluid]
    if not ids:
        return None
    interior = erode(case.labels == ids[0]) & (case.mask > 0)
    if interior.sum() < 50:
        return None
    return float(np.median(case.mr[interior]) / np.median(case.mr[erode(host)]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", action="append", required=True)
    parser.add_argument("--cases", type=int, default=1, help="cases per family and kind (default 1)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json")
    parser.add_argument("--hu", type=float, default=FLUID_HU,
                        help=f"CT value of the balls (default: fluid, {FLUID_HU:g} HU)")
    parser.add_argument("--noise-hu", type=float, default=FLUID_NOISE_HU,
                        help=f"CT noise painted with them (default {FLUID_NOISE_HU:g} HU)")
    args = parser.parse_args(argv)
    if not -1024.0 <= args.hu <= 3071.0 or args.noise_hu < 0:
        parser.error(f"--hu must be in -1024..3071 and --noise-hu >= 0 (got {args.hu}, {args.noise_hu})")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from ct2mri_node.model.translator import TranslationSettings, Translator
    from ct2mri_node.training.families import family
    from ct2mri_node.training.size_response import fluid_spheres, response

    translators = {Path(c).name: Translator(c, TranslationSettings()) for c in args.checkpoint}
    rows: list[dict[str, Any]] = []
    print(f"{'case':28} {'model':14} " + " ".join(f"r{r:>4.0f}mm" for r in RADII_MM) + "   true fluid/host")
    for name, first in EVALUATION_SEEDS.items():
        module = family(name)
        for index in range(args.cases):
            for kind in module.KINDS:
                case = module.generate_case(kind, first + index, name=f"{name}_{index}_{kind}")
                host_name, fluid = HOSTS[kind]
                ids = [v for v, n in case.label_names.items() if n == host_name]
                host = case.labels == ids[0]
                ct, spheres = fluid_spheres(case.ct, host, case.spacing, RADII_MM, np.random.default_rng(0),
                                            hu=args.hu, noise_hu=args.noise_hu)
                truth = true_ratio(case, host, fluid)
                for model, translator in translators.items():
                    synthetic = translator.translate(ct, case.spacing).mr.astype(np.float32)
                    ratios = response(synthetic, spheres, host)
                    rows.append({"case": case.name, "model": model, "host": host_name, "ball_hu": args.hu,
                                 "ball_noise_hu": args.noise_hu, "ratios": ratios,
                                 "true_fluid_over_host": truth})
                    cells = " ".join(f"{ratios[r]:7.2f}" if r in ratios else "      -" for r in RADII_MM)
                    print(f"{case.name:28} {model:14} {cells}   {truth if truth is None else round(truth, 2)}",
                          flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
