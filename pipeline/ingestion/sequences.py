"""Which MRI sequence a file or a DICOM series is, from its name or description.

The model reads three channels in the Kaggle data set's order, :data:`SEQUENCES`: pre-contrast T1, FLAIR,
post-contrast T1. FLAIR is required; T2 and labels are recognised so that they can be left out knowingly.

File names (:func:`sequence_of_filename`), case-insensitive, ``.nii`` / ``.nii.gz`` removed, split into
tokens at ``_``, ``-``, ``.`` and spaces:

1. a token in :data:`LABEL_TOKENS` anywhere (``*_seg``, ``*-seg``, ``*_mask``, ``*_label``,
   ``*_fusion``, ...) -> ``"label"``;
2. else trailing preprocessing tokens (:data:`PREPROCESSING_TOKENS`: ``bet``, ``brain``, ``n4``, ``reg``,
   ...) are dropped and the last token names the sequence (:data:`SUFFIXES`):

   =========  ==========================================================================================
   flair      ``flair``, ``fla``, ``t2f`` (BraTS 2023), ``t2flair``
   t1c        ``t1c``, ``t1ce``, ``t1gd``, ``t1post``, ``t1wce``; also ``t1_ce`` / ``t1-gd`` (two tokens)
   t1         ``t1``, ``t1n`` (BraTS 2023), ``t1w``, ``t1pre``
   t2         ``t2``, ``t2w`` (BraTS 2023)
   =========  ==========================================================================================

   so ``BraTS20_001_flair``, ``BraTS-GLI-00001-000-t2f``, ``TCGA_FG_6692_fla_bet`` are FLAIR and
   ``..._t1`` never matches ``..._t1c`` / ``..._t1ce`` (tokens are compared whole);
3. else the whole name is read as a series description (rules below, without rule 5: a name must say the
   weighting), so that converter outputs named after the protocol (``AX_FLAIR``, ``T1_AX_POST_GAD``) are
   recognised;
4. else ``None`` (the file is ignored).

Series descriptions (:func:`sequence_of_description`, DICOM SeriesDescription or ProtocolName),
case-insensitive, split into tokens at anything but letters, digits, ``*`` and ``+`` (``+`` is a token):

1. a token in :data:`EXCLUDED_TOKENS` (localizer, scout, DWI, ADC, diffusion, perfusion, SWI, T2*, MRA,
   spectroscopy, subtraction, ...) -> ``None``;
2. FLAIR (``flair`` anywhere in the text, ``dark fluid``, a ``tirm`` or ``t2f`` token) -> ``"flair"``,
   unless the text says T1 and not T2 (``T1 FLAIR`` is a T1-weighted inversion-recovery scan, taken as T1);
3. T1 (a token ``t1`` followed by letters/digits only, e.g. ``t1``, ``t1w``, ``t1se``, ``t1w3d``; or
   ``mprage``, ``mp rage``, ``spgr``, ``bravo``): ``"t1c"`` when the text has ``post`` (or ``postcontrast``,
   ``postgad``); else ``"t1"`` when it has ``pre`` (``PRE GD`` is before contrast) or ``precontrast`` /
   ``native``; else ``"t1c"`` when it has a contrast word (:data:`CONTRAST_TOKENS`: ``+`` as in ``+C`` or
   ``C+``, ``c``, ``ce``, ``gd``, ``gad``, ``gado``, ``contrast``, ``enhanced``) or a merged token
   (``t1c``, ``t1ce``, ``t1gd``, ``t1post``, ``t1wce``); else ``"t1"``;
4. T2 (a ``t2`` token followed by letters/digits only: ``t2``, ``t2w``, ``t2tse``) -> ``"t2"``;
5. a contrast word with no other weighting (``AX +C``, ``POST GD AX``) -> ``"t1c"`` (post-contrast
   structural series are T1-weighted);
6. else ``None``.
"""

from __future__ import annotations

import re

SEQUENCES: tuple[str, str, str] = ("t1", "flair", "t1c")
"""The model's channel order (the Kaggle data set's: pre-contrast T1, FLAIR, post-contrast T1)."""
_CHANNEL_NAME = {"t1": "pre-contrast", "flair": "FLAIR", "t1c": "post-contrast"}
CHANNEL_NAMES: tuple[str, ...] = tuple(_CHANNEL_NAME[s] for s in SEQUENCES)
"""The channels as messages, the datalist and the prepared image's header name them, in :data:`SEQUENCES`'
order: ``("pre-contrast", "FLAIR", "post-contrast")``."""
_CHANNEL_DESCRIPTION = {"t1": "pre-contrast T1", "flair": "FLAIR", "t1c": "post-contrast T1"}
CHANNEL_DESCRIPTIONS: tuple[str, ...] = tuple(_CHANNEL_DESCRIPTION[s] for s in SEQUENCES)
"""The channels as the bundle's ``metadata.json`` describes them (``channel_def``), in :data:`SEQUENCES`'
order."""
FLAIR_CHANNEL: int = SEQUENCES.index("flair")
"""The FLAIR's channel in the model's input."""
OTHER_CHANNELS: tuple[int, ...] = tuple(i for i, s in enumerate(SEQUENCES) if s != "flair")
"""The channels besides FLAIR (pre- and post-contrast T1), for which the FLAIR stands in when missing."""
NUM_CHANNELS: int = len(SEQUENCES)
"""The model's input channels (one per sequence; 2.5D networks see each of them on several slices)."""

CASE_SEQUENCES: tuple[str, str, str] = ("flair", "t1", "t1c")
"""The sequences a scan case takes, FLAIR first (T2 and labels are recognised and left out)."""
OTHER_SEQUENCES: tuple[str, ...] = tuple(s for s in CASE_SEQUENCES if s != "flair")
"""The sequences besides FLAIR (``"t1"``, ``"t1c"``): optional, the FLAIR stands in for a missing one."""

RECOGNISED: tuple[str, ...] = ("flair", "t1", "t1c", "t2", "label")
"""Everything :func:`sequence_of_filename` can answer (besides ``None``)."""
IMAGE_SEQUENCES: tuple[str, ...] = tuple(s for s in RECOGNISED if s != "label")
"""The recognised sequences that are images (not labels): FLAIR, T1, T1c, T2."""

NIFTI_SUFFIXES: tuple[str, str] = (".nii.gz", ".nii")
"""The endings of NIfTI file names, ``.nii.gz`` first (it is looked for before ``.nii``)."""

LABEL_TOKENS = frozenset(
    {"seg", "segmentation", "mask", "masks", "label", "labels", "fusion", "gt", "groundtruth", "truth"}
)
PREPROCESSING_TOKENS = frozenset(
    {
        "bet",
        "brain",
        "skullstripped",
        "stripped",
        "ss",
        "reg",
        "registered",
        "coreg",
        "n4",
        "bc",
        "biascorr",
        "norm",
        "normalized",
        "normalised",
        "resampled",
        "preprocessed",
        "sri24",
        "mni",
        "defaced",
    }
)
SUFFIXES: dict[str, str] = {
    **dict.fromkeys(("flair", "fla", "t2f", "t2flair"), "flair"),
    **dict.fromkeys(("t1c", "t1ce", "t1gd", "t1post", "t1wce"), "t1c"),
    **dict.fromkeys(("t1", "t1n", "t1w", "t1pre"), "t1"),
    **dict.fromkeys(("t2", "t2w"), "t2"),
}
_CONTRAST_SECOND = frozenset({"ce", "c", "gd", "post"})

EXCLUDED_TOKENS = frozenset(
    {
        "localizer",
        "localiser",
        "loc",
        "scout",
        "survey",
        "pilot",
        "3plane",
        "calibration",
        "dwi",
        "diffusion",
        "diff",
        "adc",
        "trace",
        "dti",
        "tensor",
        "fa",
        "perfusion",
        "perf",
        "dsc",
        "dce",
        "asl",
        "pcasl",
        "pwi",
        "rcbv",
        "cbf",
        "cbv",
        "mtt",
        "ttp",
        "swi",
        "swan",
        "t2*",
        "t2star",
        "mra",
        "tof",
        "angio",
        "spectroscopy",
        "svs",
        "csi",
        "mrs",
        "bold",
        "fmri",
        "sub",
        "subtraction",
        "mip",
    }
)
CONTRAST_TOKENS = frozenset({"+", "c", "ce", "gd", "gad", "gado", "gadolinium", "contrast", "enhanced"})
_POST_TOKENS = frozenset({"post", "postcontrast", "postgad", "postgd"})
_PRE_TOKENS = frozenset({"pre", "precontrast", "native"})
_T1_MERGED_CONTRAST = frozenset({"t1c", "t1ce", "t1gd", "t1post", "t1wce", "t1wc"})
_T1_WORDS = frozenset({"mprage", "spgr", "fspgr", "bravo"})
_T1_TOKEN = re.compile(r"t1[a-z0-9]*")
_T2_TOKEN = re.compile(r"t2[a-z0-9]*")


def strip_nifti_suffix(name: str) -> str:
    """``name`` without a trailing ``.nii.gz`` / ``.nii`` (any case)."""
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def sequence_of_filename(name: str) -> str | None:
    """The sequence a file name says (see the module docstring for the rules).

    Args:
        name: a file name (a path is reduced to its last component).

    Returns:
        ``"flair"``, ``"t1"``, ``"t1c"``, ``"t2"``, ``"label"`` or ``None``.
    """
    stem = strip_nifti_suffix(re.split(r"[\\/]", str(name))[-1]).lower()
    tokens = [t for t in re.split(r"[_\-.\s]+", stem) if t]
    if any(t in LABEL_TOKENS for t in tokens):
        return "label"
    while tokens and tokens[-1] in PREPROCESSING_TOKENS:
        tokens.pop()
    if not tokens:
        return None
    if tokens[-1] in SUFFIXES:
        return SUFFIXES[tokens[-1]]
    if len(tokens) >= 2 and tokens[-1] in _CONTRAST_SECOND and tokens[-2] in ("t1", "t1w"):
        return "t1c"
    return _describe(" ".join(tokens), bare_contrast=False)


def sequence_of_description(text: str) -> str | None:
    """The sequence a DICOM SeriesDescription or ProtocolName says (see the module docstring).

    Args:
        text: the description, e.g. ``"AX FLAIR"``, ``"T1 POST GD"``.

    Returns:
        ``"flair"``, ``"t1"``, ``"t1c"``, ``"t2"`` or ``None``.
    """
    return _describe(text, bare_contrast=True)


def _describe(text: str, bare_contrast: bool) -> str | None:
    lowered = str(text).lower()
    tokens = re.findall(r"[a-z0-9*]+|\+", lowered)
    token_set = set(tokens)
    if token_set & EXCLUDED_TOKENS:
        return None
    compact = re.sub(r"[^a-z0-9]", "", lowered)
    has_t1 = any(_T1_TOKEN.fullmatch(t) for t in tokens) or bool(token_set & _T1_WORDS) or "mprage" in compact
    has_t2 = any(_T2_TOKEN.fullmatch(t) and t not in ("t2f", "t2flair") for t in tokens)
    has_flair = "flair" in compact or "darkfluid" in compact or bool(token_set & {"tirm", "t2f"})
    if has_flair and not (has_t1 and not has_t2):
        return "flair"
    contrast = bool(token_set & CONTRAST_TOKENS)
    if has_t1:
        if token_set & _POST_TOKENS:
            return "t1c"
        if token_set & _PRE_TOKENS:
            return "t1"
        return "t1c" if contrast or token_set & _T1_MERGED_CONTRAST else "t1"
    if has_t2:
        return "t2"
    if bare_contrast and (contrast or token_set & _POST_TOKENS):
        return "t1c"
    return None
