"""MONAI bundles in a running node, over real associations: a checkpoint exported with
``ct2mri-node export-bundle`` translates bit for bit like the checkpoint itself; a bundle whose
network is defined only in its own config (MONAI's UNet) translates; a bundle that lacks what
the node needs is refused with the missing key named (at load, by a job, and by check-config)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import yaml
from nodekit import CLI, CaptureSCP, jobs_in, make_ct_series, node_config_data, send, wait_for

from ct2mri_node.config import load_config
from ct2mri_node.errors import CheckpointError
from ct2mri_node.model.testing import make_foreign_bundle, make_tiny_checkpoint
from ct2mri_node.node import Node

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
#: Body part -> the model the department's rules send it to.
ROUTES = {"HEAD": "ckpt", "PELVIS": "exported", "KNEE": "foreign", "CHEST": "broken"}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _without_spacing(exported: Path, out: Path) -> Path:
    """A copy of ``exported`` whose metadata lacks ``ct2mri_node.spacing_mm``."""
    shutil.copytree(exported, out)
    meta_path = out / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    del meta["ct2mri_node"]["spacing_mm"]
    meta_path.write_text(json.dumps(meta, indent=2))
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny checkpoint, its bundle written by the CLI, a foreign bundle and a broken one."""
    root = tmp_path_factory.mktemp("bundles")
    ckpt = make_tiny_checkpoint(root / "ckpt", arch="enhanced", seed=3)
    exported = root / "exported"
    done = subprocess.run([*CLI, "export-bundle", "--checkpoint", str(ckpt), "--out", str(exported)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return {"ckpt": ckpt, "exported": exported, "foreign": make_foreign_bundle(root / "foreign", seed=5),
            "broken": _without_spacing(exported, root / "broken")}


@pytest.fixture
def archive() -> Iterator[CaptureSCP]:
    scp = CaptureSCP("ARCHIVE").start()
    yield scp
    scp.stop()


def _config(tmp_path: Path, models: dict[str, Path], archive: CaptureSCP) -> Path:
    entry = {"device": "cpu", "steps": 2}
    data = node_config_data(
        models={"ckpt": {"checkpoint": str(models["ckpt"]), **entry},
                **{name: {"bundle": str(models[name]), **entry} for name in ("exported", "foreign", "broken")}},
        destinations=[archive.destination()],
        rules=[{"name": model, "match": {"BodyPartExamined": part}, "translate": model}
               for part, model in ROUTES.items()],
    )
    del data["model"]
    path = tmp_path / "node.yaml"   # in this order: the node loads the first model (ckpt) at start
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _volume(datasets: list[pydicom.Dataset], source_uid: str) -> tuple[np.ndarray, list[pydicom.Dataset]]:
    """The MR series made from ``source_uid`` as a (slices, rows, cols) array in slice order."""
    mine = [d for d in datasets if d.SOPClassUID == MR_STORAGE
            and str(d.ReferencedSeriesSequence[0].SeriesInstanceUID) == source_uid]
    mine.sort(key=lambda d: int(d.InstanceNumber))
    return np.stack([d.pixel_array for d in mine]), mine


def test_bundles_translate_in_a_node_over_associations(tmp_path: Path, models: dict[str, Path],
                                                       archive: CaptureSCP) -> None:
    config_path = _config(tmp_path, models, archive)
    # one CT, sent four times as four series (the body part picks the model): same pixels in
    series = {part: make_ct_series(tmp_path / part, seed=i, slices=12, size=40, body_part=part)
              for i, part in enumerate(ROUTES, start=1)}
    uid_of = {part: str(pydicom.dcmread(paths[0]).SeriesInstanceUID) for part, paths in series.items()}
    node = Node(load_config(config_path))
    node.start()
    try:
        for paths in series.values():
            send(node.port, paths)
        jobs = wait_for(lambda: len(node.store.list()) == 4 and jobs_in(node, "done", "failed"), 300)
        by_part = {part: next(j for j in jobs if j.series_uid == uid) for part, uid in uid_of.items()}
        assert {p: j.state for p, j in by_part.items()} == {"HEAD": "done", "PELVIS": "done", "KNEE": "done",
                                                            "CHEST": "failed"}, [j.reason for j in jobs]
        provenance = {p: node.store.provenance(by_part[p].id) for p in ("HEAD", "PELVIS", "KNEE")}
        # the broken bundle is refused when the job loads it, with the missing key named; its CT is kept
        assert "ct2mri_node.spacing_mm" in (by_part["CHEST"].reason or "")
        assert (node.spool.incoming / uid_of["CHEST"]).exists()
    finally:
        node.stop()

    # the exported bundle's MR equals the checkpoint's, bit for bit (CPU)
    ckpt_mr, _ = _volume(archive.datasets, uid_of["HEAD"])
    bundle_mr, bundle_ds = _volume(archive.datasets, uid_of["PELVIS"])
    assert ckpt_mr.shape == (12, 40, 40) and ckpt_mr.any()
    assert bundle_mr.dtype == ckpt_mr.dtype and np.array_equal(bundle_mr, ckpt_mr)

    # the foreign network translated: a full series of non-constant MR inside the body
    foreign_mr, foreign_ds = _volume(archive.datasets, uid_of["KNEE"])
    assert foreign_mr.shape == (12, 40, 40) and foreign_mr.std() > 0

    # provenance and the DICOM output name each bundle, its version and its weights' sha256
    exported_hash = _sha256(models["exported"] / "models" / "model.safetensors")
    foreign_hash = _sha256(models["foreign"] / "models" / "model.pt")
    assert exported_hash == _sha256(models["ckpt"] / "model.safetensors")    # copied byte for byte
    assert provenance["HEAD"]["model"]["source"] == "checkpoint"
    assert {"name": "ct2mri-enhanced-tiny-test", "version": "0.0.0", "weight_hash": exported_hash,
            "source": "bundle"}.items() <= provenance["PELVIS"]["model"].items()
    assert {"name": "foreign-unet-test", "version": "1.2.0", "weight_hash": foreign_hash,
            "source": "bundle"}.items() <= provenance["KNEE"]["model"].items()
    assert "MONAI bundle UNet" in provenance["KNEE"]["model"]["architecture"]
    for ds, name, version, digest in ((bundle_ds[0], "ct2mri-enhanced-tiny-test", "0.0.0", exported_hash),
                                      (foreign_ds[0], "foreign-unet-test", "1.2.0", foreign_hash)):
        description = str(ds.ContributingEquipmentSequence[0].ContributionDescription)
        assert f"{name} {version}" in description and digest in description and "MONAI bundle" in description


def test_bundle_without_spacing_is_refused_at_load_and_by_check_config(tmp_path: Path, models: dict[str, Path],
                                                                       archive: CaptureSCP) -> None:
    from ct2mri_node.model.translator import TranslationSettings, Translator

    with pytest.raises(CheckpointError, match=r"lacks ct2mri_node\.spacing_mm"):
        Translator(settings=TranslationSettings(device="cpu"), bundle=models["broken"])
    done = subprocess.run([*CLI, "check-config", str(_config(tmp_path, models, archive))],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "models.broken.bundle" in done.stderr and "ct2mri_node.spacing_mm" in done.stderr
    assert "models.exported.bundle" not in done.stderr and "models.foreign.bundle" not in done.stderr


@pytest.mark.parametrize("missing", ["ct2mri_node.intensity", "network_data_format.inputs.image.num_channels",
                                     "network_data_format.outputs.pred.num_channels", "name"])
def test_bundle_lacking_what_the_node_needs_names_the_key(tmp_path: Path, models: dict[str, Path],
                                                         missing: str) -> None:
    from ct2mri_node.model.bundle_meta import read_bundle_meta

    bundle = shutil.copytree(models["foreign"], tmp_path / "bundle")
    meta_path = bundle / "configs" / "metadata.json"
    meta: dict[str, Any] = json.loads(meta_path.read_text())
    *parents, last = missing.split(".")
    node = meta
    for part in parents:
        node = node[part]
    del node[last]
    meta_path.write_text(json.dumps(meta))
    reported = missing + (".ct" if missing.endswith("intensity") else "")
    with pytest.raises(CheckpointError, match=f"lacks {reported.replace('.', chr(92) + '.')}"):
        read_bundle_meta(bundle)


def test_config_takes_checkpoint_or_bundle_not_both(tmp_path: Path) -> None:
    from ct2mri_node.config import parse_config
    from ct2mri_node.errors import ConfigError

    with pytest.raises(ConfigError, match="checkpoint or bundle, not both"):
        parse_config(node_config_data(model={"checkpoint": "bundled", "bundle": "b"}), tmp_path)
    config = parse_config(node_config_data(model={"bundle": "b", "device": "cpu"}), tmp_path)
    assert config.model.bundle == str(tmp_path / "b")           # relative to the config's folder


def test_translate_command_runs_a_bundle(tmp_path: Path, models: dict[str, Path]) -> None:
    """``ct2mri-node translate --bundle`` (one series, no node): the foreign bundle's MR series."""
    ct = make_ct_series(tmp_path / "ct", seed=9, slices=10, size=32)
    done = subprocess.run([*CLI, "translate", "--input", str(tmp_path / "ct"), "--output", str(tmp_path / "mr"),
                           "--bundle", str(models["foreign"]), "--device", "cpu"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    mr = [pydicom.dcmread(p) for p in sorted((tmp_path / "mr").rglob("*.dcm")) if p.is_file()]
    mr = [d for d in mr if d.SOPClassUID == MR_STORAGE]
    assert len(mr) == len(ct)
    assert all("foreign-unet-test 1.2.0" in str(d.ContributingEquipmentSequence[0].ContributionDescription)
               for d in mr)
    both = subprocess.run([*CLI, "translate", "--input", str(tmp_path / "ct"), "--output", str(tmp_path / "x"),
                           "--bundle", str(models["foreign"]), "--checkpoint", "bundled"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
