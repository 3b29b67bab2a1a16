"""Per-destination attribute coercion (issue 21): ``destinations[].coerce`` changes what one
destination receives and nothing else.

Over real associations: a node sends one MR series to a DICOM archive with a coercion and to a
folder without one. The archive gets the coerced attributes; the folder, the spool's files, the
UIDs and the pixel data are the node's output as written, and that output stays dciodvfy-clean.
At config load every coercion error names its key, an unknown keyword with a suggestion. The
deliver package's imports run one way (dispatch -> senders -> report), which a cycle would break.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from nodekit import CaptureSCP, jobs_in, make_ct_series, node_config, send, wait_for

from ct2mri_node.config import load_config
from ct2mri_node.errors import ConfigError
from ct2mri_node.jobs.outputs import output_dir
from ct2mri_node.node import Node

DELIVER = Path(__file__).resolve().parents[2] / "ct2mri_node" / "deliver"
COERCION = {"RepetitionTime": None, "EchoTime": None, "EchoTrainLength": None,
            "InstitutionName": "Planning dept", "ImageComments": "for planning"}


def test_a_destination_gets_its_coercion_and_nothing_else_changes(
    start_node: Callable[..., Node], capture: CaptureSCP, tmp_path: Path
) -> None:
    from dicom_checks import assert_valid_files

    outbox = tmp_path / "outbox"
    config = node_config(tmp_path, destinations=[
        {**capture.destination("tps"), "coerce": COERCION},
        {"name": "plain", "type": "folder", "path": str(outbox)},
    ])
    node = start_node(config)
    send(node.port, make_ct_series(tmp_path / "ct", seed=21))
    (job,) = wait_for(lambda: jobs_in(node, "done", "failed"), 120)
    assert job.state == "done", job.reason
    assert node.spool is not None
    spooled = sorted(output_dir(node.spool, job.id).glob("*.dcm"))
    written = {p.name: p.read_bytes() for p in spooled}
    assert len(spooled) == len(capture.datasets) > 0

    # the folder without a coercion got the spool's bytes; the spool is valid as written
    (folder,) = outbox.iterdir()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == written
    assert_valid_files(spooled[:1])
    ours = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, spooled)}
    assert all(k in ds for ds in ours.values() for k in ("RepetitionTime", "EchoTime", "EchoTrainLength"))

    # the archive got the same instances, coerced: removed, set, the rest equal
    for sent in capture.datasets:
        original = ours.pop(str(sent.SOPInstanceUID))
        assert "RepetitionTime" not in sent and "EchoTime" not in sent and "EchoTrainLength" not in sent
        assert sent.InstitutionName == "Planning dept" and sent.ImageComments == "for planning"
        for keyword in ("SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID", "PixelData"):
            assert sent[keyword].value == original[keyword].value, keyword
        for keyword, value in COERCION.items():
            if value is None:
                del original[keyword]
            else:
                setattr(original, keyword, value)
        assert {e.keyword: e.value for e in sent} == {e.keyword: e.value for e in original}
    assert ours == {}


@pytest.mark.parametrize(("coerce", "expected"), [
    ({"RepetitonTime": None}, "destinations[0].coerce.RepetitonTime: 'RepetitonTime' is not a DICOM keyword"
                              " (e.g. RepetitionTime, InstitutionName); did you mean RepetitionTime?"),
    ({"RepetitionTime": "fast"}, "destinations[0].coerce.RepetitionTime: 'fast' does not fit RepetitionTime (VR DS)"),
    ({"EchoTrainLength": 2.5}, "destinations[0].coerce.EchoTrainLength: 2.5 does not fit EchoTrainLength (VR IS)"),
    ({"Modality": "mr"}, "destinations[0].coerce.Modality: 'mr' does not fit Modality (VR CS)"),
    ({"InstitutionName": 7}, 'destinations[0].coerce.InstitutionName: 7 does not fit InstitutionName (VR LO): '
                             '7 is not text for VR LO (quote it: "7")'),
    ({"PatientID": ["A", "B"]}, "destinations[0].coerce.PatientID: PatientID takes one value (VM 1), got 2"),
    ({"SOPInstanceUID": "1.2.3"}, "destinations[0].coerce.SOPInstanceUID: SOPInstanceUID identifies the instance"),
    ({"PixelData": None}, "destinations[0].coerce.PixelData: PixelData identifies the instance or describes its pixels"),
    ({"ReferencedImageSequence": "x"}, "destinations[0].coerce.ReferencedImageSequence: ReferencedImageSequence "
                                       "has VR SQ; a coercion can only remove it (null)"),
    ([1], "destinations[0].coerce: coerce is a mapping of DICOM keywords"),
])
def test_a_bad_coercion_is_refused_at_load_naming_its_key(tmp_path: Path, coerce: object, expected: str) -> None:
    import yaml

    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({"destinations": [{"name": "tps", "type": "folder", "path": "out",
                                                      "coerce": coerce}]}))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert expected in str(error.value)


def test_a_good_coercion_loads_for_every_destination_type(tmp_path: Path) -> None:
    import yaml

    coerce = {"RepetitionTime": None, "SliceThickness": 2.5, "EchoNumbers": 1, "InstitutionName": "X",
              "ImageType": ["DERIVED", "SECONDARY"], "ReferencedImageSequence": None}
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({"destinations": [
        {"name": "a", "type": "folder", "path": "out", "coerce": coerce},
        {"name": "b", "type": "dicom", "ae_title": "TPS", "host": "127.0.0.1", "port": 104, "coerce": coerce},
        {"name": "c", "type": "dicomweb", "url": "http://127.0.0.1:8042/dicom-web", "coerce": coerce},
        {"name": "d", "type": "folder", "path": "out2"},
    ]}))
    config = load_config(path)
    expected = {"RepetitionTime": None, "SliceThickness": "2.5", "EchoNumbers": "1", "InstitutionName": "X",
                "ImageType": ["DERIVED", "SECONDARY"], "ReferencedImageSequence": None}
    assert [d.coerce for d in config.destinations] == [expected, expected, expected, {}]


def _deliver_imports(path: Path) -> set[str]:
    """The deliver modules ``path`` imports (``from .x import``, ``from ..deliver.x import``), at any level."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.level == 1:
                found.add(node.module.split(".")[0])
            elif node.module.startswith("deliver.") or node.module.startswith("ct2mri_node.deliver."):
                found.add(node.module.rsplit(".", 1)[-1])
    return found


def test_deliver_imports_run_one_way() -> None:
    graph = {p.stem: _deliver_imports(p) for p in DELIVER.glob("*.py") if p.stem != "__init__"}

    def reaches(start: str, target: str, seen: frozenset[str] = frozenset()) -> bool:
        return any(n == target or (n not in seen and reaches(n, target, seen | {n})) for n in graph.get(start, ()))

    cycles = sorted(m for m in graph if reaches(m, m))
    assert cycles == [], f"deliver modules in an import cycle: {cycles}"
    # the senders know the report type, not each other nor the dispatch
    for sender in ("send", "dicomweb", "folder"):
        assert "report" in graph[sender] and not graph[sender] & {"send", "dicomweb", "folder", "dispatch"} - {sender}
    assert {"send", "dicomweb", "folder", "report"} <= graph["dispatch"]
