"""Benchmark: a checkpoint exported as a MONAI bundle translates like the checkpoint itself.

    .venv/bin/python benchmarks/bundle_equivalence.py [--checkpoint bundled|DIR] [--device cpu]

Exports the checkpoint (``ct2mri_node.model.bundle.export_bundle``) into a temporary folder,
translates one pelvis phantom (``ct2mri_node.training.phantoms``, 48 x 160 x 160 at 3 x 1.5 x
1.5 mm) with the checkpoint and with the bundle, and prints whether the two 12-bit MR volumes
are equal, the largest difference, both times and both weight hashes. On the CPU they must be
equal bit for bit (exit 1 otherwise).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE = (48, 160, 160)
SPACING = (3.0, 1.5, 1.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="bundled", help="checkpoint folder or 'bundled' (default)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    args = parser.parse_args()

    from ct2mri_node.model.bundle import export_bundle
    from ct2mri_node.model.translator import TranslationSettings, Translator
    from ct2mri_node.training.phantoms import generate_case

    ct = generate_case("pelvis", seed=0, shape=SHAPE, spacing=SPACING).ct.astype(np.float32)
    settings = TranslationSettings(device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = export_bundle(args.checkpoint, Path(tmp) / "bundle")
        results = {}
        for label, translator in (("checkpoint", lambda: Translator(args.checkpoint, settings)),
                                  ("bundle", lambda: Translator(settings=settings, bundle=bundle))):
            start = time.perf_counter()
            result = translator().translate(ct, SPACING)
            results[label] = (result, time.perf_counter() - start)
    (a, ta), (b, tb) = results["checkpoint"], results["bundle"]
    diff = int(np.abs(a.mr.astype(np.int32) - b.mr.astype(np.int32)).max())
    equal = bool(np.array_equal(a.mr, b.mr))
    print(f"model {a.model.name} {a.model.version} on {a.device} ({a.precision}), CT {SHAPE} at {SPACING} mm")
    print(f"checkpoint: {ta:.1f} s, weights sha256 {a.model.weight_hash}")
    print(f"bundle:     {tb:.1f} s, weights sha256 {b.model.weight_hash} ({b.model.architecture})")
    print(f"MR equal bit for bit: {equal} (largest difference {diff} of 4095)")
    return 0 if equal or a.device != "cpu" else 1


if __name__ == "__main__":
    sys.exit(main())
