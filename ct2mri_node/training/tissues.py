"""Tissue names shared by every data generator and by the tissue-order score.

A generator that knows its tissues writes a label map beside the case (``labels.nii.gz``,
uint8) and the names of its labels (``labels.json``: ``{"0": "air", "1": "fat", ...}``), see
:func:`ct2mri_node.training.pairs.write_labels`. Names come from :data:`TISSUE_NAMES`, so that the
evaluation can check the T1w order of tissues whatever generator made a case.
"""

from __future__ import annotations

#: Canonical tissue names (a label map may use any subset).
AIR = "air"                    # outside the body and air in sinuses/airways: dark on T1w
GAS = "bowel_gas"              # gas in the bowel: dark on T1w
FAT = "fat"                    # bright on T1w, about -100 HU
MUSCLE = "muscle"              # intermediate on T1w
CORTICAL_BONE = "cortical_bone"  # very dense on CT, dark on T1w
MARROW = "marrow"              # fatty/trabecular marrow: dense on CT, bright on T1w
GREY_MATTER = "grey_matter"
WHITE_MATTER = "white_matter"  # T1w: white > grey > CSF
CSF = "csf"
URINE = "urine"                # dark on T1w, like CSF
ORGAN = "organ"                # prostate, uterus, bowel wall, liver...: soft tissue, intermediate
EYE = "eye"                    # vitreous: dark on T1w
SKIN = "skin"                  # scalp/skin: intermediate

TISSUE_NAMES: tuple[str, ...] = (
    AIR, GAS, FAT, MUSCLE, CORTICAL_BONE, MARROW, GREY_MATTER, WHITE_MATTER, CSF, URINE, ORGAN, EYE, SKIN,
)
