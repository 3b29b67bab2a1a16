"""The uncertainty map's sources and its conformal scale, as the model card records them.

Sources: the samples differ in the sampler's noise (``steps`` >= 2) and, from the second sample on,
in a test-time flip of the CT (:data:`FLIPS`, undone on the output), so the spread also holds the
flips' disagreement: where the network's answer depends on which way the anatomy faces or where
its sliding windows fall, which a noise-only spread cannot see. A list of independently trained
networks (deep ensembles) would be one more source; none is shipped (see docs/model.md).

Scale: ``benchmarks/uncertainty_calibration.py calibrate --write-card`` measures, on calibration
cases with known truth, a floor ``s0`` (MR grey levels: the error the flips and samples cannot
see, which every voxel carries) and the factor ``k`` so that mean +- 2 k (SD + s0) covers the
target share of body voxels (split-conformal with a stabilised score, :func:`~ct2mri_node.training.
calibration.conformal_scale`; ``s0`` is the candidate giving the narrowest band), and writes both
into the card's ``uncertainty`` section. Adding a constant does not change the map's ranking. The
translator returns ``k (SD + s0)`` inside the body; a card without the section gives ``k`` = 1,
``s0`` = 0 and the map says it is uncalibrated.
Pure logic, no torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)

#: Test-time flips, in the order the samples use them: axes of the (z, y, x) model grid
#: (2: x, left-right; 1: y, anterior-posterior). The first is none, so one sample is the plain
#: translation and its output is unchanged by test-time augmentation.
FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (1,), (1, 2))
#: What the map's sources are, in words (card, labels and docs).
SOURCES = "test-time flips (none, left-right, anterior-posterior, both, in that order) and the sampler's noise"
#: The half-width of the band the calibration targets, in SD: mean +- 2 SD.
BAND_SD = 2.0


def sample_flips(samples: int) -> list[tuple[int, ...]]:
    """The flip of each of ``samples`` samples: :data:`FLIPS` in turn."""
    return [FLIPS[i % len(FLIPS)] for i in range(samples)]


class _Settings(Protocol):
    """What of :class:`~.translator.TranslationSettings` a calibration is checked against (read-only)."""

    @property
    def sampler(self) -> str: ...
    @property
    def steps(self) -> int | None: ...
    @property
    def samples(self) -> int: ...
    @property
    def overlap(self) -> float: ...


@dataclass(frozen=True)
class UncertaintyCalibration:
    """The conformal scale applied to the SD and what it promises.

    ``scale`` multiplies the SD (1 when the card has no calibration). ``target`` is the share of
    body voxels mean +- 2 SD is meant to cover, ``achieved`` what it covered on the calibration
    cases (mean of per-case shares), ``made_for`` the settings the scale was measured with, and
    ``matches`` whether the translation uses those settings (else the promise is unverified)."""

    scale: float = 1.0
    #: MR grey levels added to the SD inside the body before scaling (0: none).
    floor: float = 0.0
    calibrated: bool = False
    target: float = 0.0
    achieved: float = 0.0
    made_for: str = ""
    matches: bool = False
    cases: int = 0

    @classmethod
    def from_card(cls, section: dict[str, Any], settings: _Settings) -> UncertaintyCalibration:
        """From the card's ``uncertainty`` section (empty: uncalibrated) for ``settings``."""
        if not section:
            return cls()
        made = (str(section["sampler"]), int(section["steps"]), int(section["samples"]), float(section["overlap"]))
        used = (settings.sampler, int(settings.steps or 0), settings.samples, float(settings.overlap))
        return cls(scale=float(section["k"]), floor=float(section.get("floor", 0.0)), calibrated=True, target=float(section["target_coverage"]),
                   achieved=float(section["coverage_mean"]), made_for=describe_settings(*made),
                   matches=made == used, cases=len(section.get("cases", [])))

    def apply(self, sd: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``scale * (sd + floor)`` inside ``mask``, 0 outside (float32; ``sd`` itself when uncalibrated)."""
        if self.scale == 1.0 and self.floor == 0.0:
            return sd
        out = (np.float32(self.scale) * (sd + np.float32(self.floor))).astype(np.float32, copy=False)
        out[~np.asarray(mask, dtype=bool)] = 0.0
        return out

    def log_mismatch(self, name: str, version: str, settings: _Settings) -> None:
        """A warning when the scale was measured with other settings than ``settings`` (or is absent)."""
        used = describe_settings(settings.sampler, int(settings.steps or 0), settings.samples, settings.overlap)
        if not self.calibrated:
            log.warning("model %s %s has no uncertainty calibration in its card: the uncertainty map is the raw "
                        "SD (scale 1) and its coverage is unknown", name, version)
        elif not self.matches:
            log.warning("model %s %s: the uncertainty scale %.3f was calibrated for %s, this translation uses %s; "
                        "the map is scaled by it but its coverage (%.0f %% at +-2 SD) is not verified for these "
                        "settings; run benchmarks/uncertainty_calibration.py calibrate for them",
                        name, version, self.scale, self.made_for, used, 100 * self.target)

    def short_label(self, samples: int) -> str:
        """At most 64 characters for the Parametric Map's content description."""
        if not self.calibrated:
            return f"SD of {samples} flip/noise samples, uncalibrated (x1)"[:64]
        tag = "" if self.matches else ", other settings"
        return f"{self.scale:.2f}x(SD+{self.floor:.0f}); +-2x {100 * self.target:.0f}% on calib. cases{tag}"[:64]

    def sentence(self, samples: int) -> str:
        """A sentence for the derivation description, the docs and the logs."""
        head = (f"per-voxel SD across {samples} samples, whose sources are {SOURCES}; it cannot see an "
                "error shared by every flip and sample, and is no per-voxel guarantee")
        if not self.calibrated:
            return f"{head}; not calibrated (the model card has no uncertainty section): scale 1, coverage unknown"
        where = ("" if self.matches else
                 f"; measured for {self.made_for}, not the settings used here, so the coverage is not verified")
        return (f"{head}; plus a floor of {self.floor:.0f} grey levels (error the flips and samples cannot see) "
                f"and multiplied by the split-conformal scale {self.scale:.3f}, so that mean +- 2 x the map covers "
                f"{100 * self.target:.0f} % of body voxels on {self.cases} calibration cases "
                f"(achieved {100 * self.achieved:.1f} %){where}")


def describe_settings(sampler: str, steps: int, samples: int, overlap: float) -> str:
    """The settings a calibration holds for, in words."""
    return f"{sampler} sampler, {steps} steps, {samples} samples, overlap {overlap:g}"
