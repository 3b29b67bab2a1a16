"""Cases on the model grid, persisted once and read lazily: the training data at SynthRAD scale.

Why: SynthRAD is 180 brain and 180 pelvis cases at 1 mm; holding every case in memory (what
training did before) grows with the number of cases, and resampling every case at every start
is the slow part of a run. Here each case is resampled to the model grid once and written to a
cache folder, keyed by the case, the source files (size and modification time), the spacing and
:data:`CACHE_VERSION`; a later run (or another rank, or another run at the same spacing) reads
it back, and a changed spacing or a changed source file misses the cache and is resampled.

A cached case is four plain ``.npy`` files (CT in HU as int16, raw MR as float16, the body
voxels as int16 coordinates, the training target's per-case linear map in ``meta.json``), read
through memory maps one patch at a time: memory stays bounded by the patches in flight, whatever
the number of cases. Patch sampling (``model.trainer``) runs in DataLoader worker processes.

Sources: a SynthRAD-layout folder (``<case>/{ct,mr,mask}``, read with SimpleITK) or a prepared
folder (``ct2mri-node prepare``, numpy only).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..model import pre_post
from . import prepared as prep

log = logging.getLogger(__name__)

#: Bump when what a cached case holds, or how it is made, changes: old entries then miss.
CACHE_VERSION = 1
META = "meta.json"
_lock = threading.Lock()


@dataclass
class CachedCase:
    """One case in the cache: read a patch of it (CT channels and MR target) without loading it.

    Picklable (a path and a few numbers), so DataLoader workers open the files themselves."""

    name: str
    folder: Path
    shape: tuple[int, int, int]
    body_voxels: int
    target: dict[str, tuple[float, float]]
    family: str = "unlabelled"
    mapping: pre_post.IntensityMapping = field(default_factory=pre_post.IntensityMapping)
    mr_method: str = "fat"

    def with_encoding(self, mapping: pre_post.IntensityMapping, mr_method: str) -> CachedCase:
        """The same case read with another CT mapping or MR target."""
        if mr_method not in self.target:
            raise DataError(f"unknown MR normalisation {mr_method!r}")
        return CachedCase(self.name, self.folder, self.shape, self.body_voxels, self.target, self.family,
                          mapping, mr_method)

    def body_voxel(self, index: int) -> np.ndarray:
        """The ``index``-th body voxel (z, y, x)."""
        return np.asarray(np.load(self.folder / "body.npy", mmap_mode="r")[index], dtype=np.int64)

    def read(self, corner: tuple[int, int, int], size: int) -> tuple[np.ndarray, np.ndarray]:
        """CT channels (C, size^3) and MR target (size^3) at ``corner``, padded with -1 beyond the case."""
        sl = tuple(slice(c, min(c + size, n)) for c, n in zip(corner, self.shape))
        hu = np.array(np.load(self.folder / "hu.npy", mmap_mode="r")[sl], dtype=np.float32)
        mr = np.array(np.load(self.folder / "mr.npy", mmap_mode="r")[sl], dtype=np.float32)
        scale, offset = self.target[self.mr_method]
        mr = np.clip(mr * np.float32(scale) + np.float32(offset), -1.0, 1.0)
        ct = self.mapping.encode(hu)
        pads = [(0, size - (s.stop - s.start)) for s in sl]
        if any(p[1] for p in pads):
            ct = np.pad(ct, [(0, 0), *pads], constant_values=-1.0)
            mr = np.pad(mr, pads, constant_values=-1.0)
        return ct, mr.astype(np.float32, copy=False)


class GridCache:
    """The cache folder: one sub-folder per (case, source stamp, spacing, version)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(name: str, stamp: str, spacing_mm: float) -> str:
        text = json.dumps({"case": name, "source": stamp, "spacing_mm": round(float(spacing_mm), 6),
                           "version": CACHE_VERSION, "prepared_format": prep.FORMAT_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def get(self, name: str, stamp: str, spacing_mm: float, make: Callable[[], prep.GridCase]) -> CachedCase:
        """The cached case, made with ``make`` (and written) on a miss."""
        folder = self.root / f"{name}-{self.key(name, stamp, spacing_mm)}"
        meta_path = folder / META
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
                self.hits += 1
                return _from_meta(folder, meta)
            except (OSError, ValueError, KeyError) as exc:
                log.warning("grid cache entry %s is unreadable (%s); making it again", folder.name, exc)
        self.misses += 1
        grid = make()
        self._write(folder, grid)
        return _from_meta(folder, json.loads(meta_path.read_text()))

    def _write(self, folder: Path, grid: prep.GridCase) -> None:
        """Write one entry atomically (a temporary folder renamed), so a crash or a concurrent
        writer never leaves a half-written entry that a later run would read."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{folder.name}.{os.getpid()}.{threading.get_ident()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        hu = np.rint(np.clip(grid.hu, *prep.HU_STORED)).astype(np.int16)
        mr = grid.mr.astype(np.float16)
        mask = np.asarray(grid.mask, dtype=bool)
        np.save(tmp / "hu.npy", hu)
        np.save(tmp / "mr.npy", mr)
        np.save(tmp / "body.npy", np.argwhere(mask).astype(np.int16))
        hu32, mr32 = hu.astype(np.float32), mr.astype(np.float32)
        target = {method: pre_post.mr_target_map(mr32, hu32, mask, method) for method in pre_post.MR_METHODS}
        meta = {"name": grid.name, "family": grid.family, "shape": list(hu.shape), "body_voxels": int(mask.sum()),
                "target": target, "version": CACHE_VERSION}
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
        with _lock:
            if (folder / META).is_file():  # another writer was first: theirs is identical
                shutil.rmtree(tmp, ignore_errors=True)
                return
            shutil.rmtree(folder, ignore_errors=True)
            try:
                tmp.rename(folder)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
                if not (folder / META).is_file():
                    raise
        log.info("grid cache: resampled %s to %s", grid.name, hu.shape)


def _from_meta(folder: Path, meta: dict[str, Any]) -> CachedCase:
    return CachedCase(str(meta["name"]), folder, tuple(int(n) for n in meta["shape"]),  # type: ignore[arg-type]
                      int(meta["body_voxels"]), {k: (float(v[0]), float(v[1])) for k, v in meta["target"].items()},
                      str(meta.get("family", "unlabelled")))


def _stamp(*paths: Path) -> str:
    """What identifies a source file's content cheaply: name, size, modification time."""
    parts = []
    for path in paths:
        st = path.stat()
        parts.append(f"{path.name}:{st.st_size}:{st.st_mtime_ns}")
    return ";".join(parts)


def default_cache_dir(out: Path) -> Path:
    """Where a run caches its grid when no --cache is given: beside its state, in ``out``."""
    return Path(out) / "grid-cache"


def cached_cases(data: Path, spacing_mm: float, cache: GridCache, mapping: pre_post.IntensityMapping,
                 mr_method: str = "fat") -> list[CachedCase]:
    """Every training case of ``data`` (a prepared or a SynthRAD-layout folder) in ``cache``:
    resampled (or decompressed) on a miss, one case at a time, so memory holds one case at most.

    Cases of an evaluation-only family are refused: DataError."""
    data = Path(data)
    cases: list[CachedCase] = []
    if prep.is_prepared(data):
        manifest = prep.read_manifest(data)
        if abs(float(manifest["spacing_mm"]) - spacing_mm) > 1e-6:
            raise DataError(f"{data} was prepared at {manifest['spacing_mm']} mm, the run asks for {spacing_mm} mm; "
                            "prepare it again with --spacing")
        for name in manifest["cases"]:
            family = str(manifest.get("families", {}).get(name, "unlabelled"))
            prep.check_training_family(name, family)
            path = data / f"{name}.npz"
            if not path.is_file():
                raise DataError(f"{data}: case {name} is missing; prepare the data again")
            def read(name: str = name, family: str = family) -> prep.GridCase:
                return prep.read_one(data, name, family)

            cases.append(cache.get(name, _stamp(path), spacing_mm, read))
    else:
        from . import pairs

        for case_dir in pairs.list_cases(data):
            family = prep.case_family(case_dir)
            prep.check_training_family(case_dir.name, family)
            files = sorted(p for p in case_dir.iterdir() if p.name.split(".")[0] in pairs.IMAGE_STEMS)

            def make(case_dir: Path = case_dir, family: str = family) -> prep.GridCase:
                case = pairs.load_case(case_dir)
                return prep.to_grid(case.name, case.ct, case.mr, case.mask, case.spacing, spacing_mm, family)

            cases.append(cache.get(case_dir.name, _stamp(*files), spacing_mm, make))
    if not cases:
        raise DataError(f"{data}: no training case")
    log.info("grid cache %s: %d case(s) read, %d resampled", cache.root, cache.hits, cache.misses)
    return [case.with_encoding(mapping, mr_method) for case in cases]
