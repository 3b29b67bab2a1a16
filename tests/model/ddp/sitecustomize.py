"""Imported at start-up by every Python process of the DDP tests (its folder is put first on
PYTHONPATH): records what each torchrun rank writes under $CT2MRI_WATCH into
$CT2MRI_WRITES/rank<RANK>.txt, through the interpreter's audit hooks (open for writing,
rename/replace, mkdir, remove), so a test sees which rank wrote what without touching the code
under test."""

import os
import sys

_watch = os.environ.get("CT2MRI_WATCH")
_report = os.environ.get("CT2MRI_WRITES")
if _watch and _report and "RANK" in os.environ:
    _path = os.path.join(_report, f"rank{os.environ['RANK']}.txt")
    _events = {"os.rename", "os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree"}

    def _hook(event: str, args: tuple) -> None:  # type: ignore[type-arg]
        if event == "open":
            target, mode = args[0], args[1]
            if not isinstance(target, str | bytes | os.PathLike) or not isinstance(mode, str):
                return
            if not any(c in mode for c in "wax+"):
                return
        elif event not in _events:
            return
        else:
            target = args[0]
        try:
            text = os.fsdecode(target)
        except TypeError:
            return
        if os.path.abspath(text).startswith(_watch) and not text.startswith(_report):
            with open(_path, "a", encoding="utf-8") as f:
                f.write(f"{event} {text}\n")

    sys.addaudithook(_hook)
