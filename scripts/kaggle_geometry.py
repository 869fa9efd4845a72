"""How the LGG Kaggle slices of one patient were made from the raw TCIA series; its mask carried back.

For TCGA_FG_6692_20020606 the shared data hold both the Kaggle TIFFs (``kaggle_3m/<patient>``) and the raw
TCIA series as NIfTI (``external/tcia_raw/<patient>``: FLAIR ``*_fla``, T1 ``*_t1``, T1 post-gadolinium
``*_t1c``).
This script reproduces the measurements of the Kaggle geometry and prints the figures:

1. The Kaggle grid is the pre-contrast T1 grid, not the FLAIR grid. Channel 0 of the TIFFs is reproduced
   pixel for pixel from the raw T1: each T1 slice in DICOM display orientation (rows anterior->posterior,
   columns patient right->left), divided by the T1 volume maximum, enlarged with MATLAB ``imresize``
   (bicubic, a = -0.5) by 256 / 224 (isotropic) to 256 x 293, centre-cropped to columns 18..273 (1-based,
   MATLAB ``center_crop`` of the authors' ``preprocessing3D.m``), times 255 and rounded (``im2uint8``).
   Kaggle slice k is T1 slice k - 1; slices run inferior -> superior (slice 1 is the most inferior).
   Hence the Kaggle voxel [row, column, slice] has a true affine (axis codes P, L, S; 0.786 x 0.786 x 5.5 mm).
2. The FLAIR (channel 1) and the T1c (channel 2) were registered onto that T1 grid; the scanner coordinates
   alone do not align them (in scanner space the FLAIR lies 17 mm and about 5 degrees away). The script
   registers the Kaggle FLAIR channel, placed at its true position, to the raw FLAIR (3D rigid, then 3D
   affine, Mattes mutual information) and reports the correlations (plain resize, the T1 recipe applied to
   the FLAIR, scanner space, rigid, affine, a forward model of the whole recipe, 2D per-slice registration),
   the slice correspondence and the intensity relation (linear through 0: the volume maximum maps to 255).
3. The Kaggle mask is the nearest-neighbour enlargement of a mask on the 224 x 256 T1 grid; it is carried onto
   the raw FLAIR grid through the affine registration (linear interpolation, threshold 0.5) and written to
   ``--output-mask`` with the raw FLAIR's affine and shape (never over an existing file).

    python scripts/kaggle_geometry.py \\
        --raw-flair ../shared/data/external/tcia_raw/TCGA_FG_6692_20020606/<...>_fla.nii.gz \\
        --kaggle-patient ../shared/data/lgg/kaggle_3m/TCGA_FG_6692_20020606 \\
        --output-mask /tmp/TCGA_FG_6692_kaggle_mask_on_raw.nii.gz

The T1 and T1c files are found next to the FLAIR (``*_t1.nii.gz``, ``*_t1c.nii.gz``) unless given. The raw
NIfTI files must be in the LAS-like orientation dcm2niix writes (first axis patient left, second anterior).
Runs in about half a minute on two CPU threads.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import tifffile

KAGGLE_SIZE = 256
HEAD_THRESHOLD = 10  # Kaggle uint8 value above which a pixel counts as inside the head (correlations)
LPS = np.diag([-1.0, -1.0, 1.0])


# --- inputs ---------------------------------------------------------------------------------------------


def load_kaggle(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The Kaggle slices of a patient, (slices, 256, 256, 3) uint8, and masks, (slices, 256, 256) bool."""
    pattern = re.compile(re.escape(folder.name) + r"_(\d+)\.tif$")
    numbers = sorted(int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name)))
    if not numbers or numbers != list(range(1, len(numbers) + 1)):
        raise SystemExit(f"{folder}: expected {folder.name}_1.tif .. _N.tif, found slices {numbers[:5]}...")
    images = np.stack([tifffile.imread(folder / f"{folder.name}_{n}.tif") for n in numbers])
    masks = np.stack([tifffile.imread(folder / f"{folder.name}_{n}_mask.tif") for n in numbers]) > 0
    if images.shape[1:] != (KAGGLE_SIZE, KAGGLE_SIZE, 3):
        raise SystemExit(f"{folder}: expected 256x256x3 slices, got {images.shape[1:]}")
    return images, masks


def load_las(path: Path) -> nib.Nifti1Image:
    img = nib.load(path)
    codes = nib.aff2axcodes(img.affine)
    if codes != ("L", "A", "S"):
        raise SystemExit(f"{path}: axis codes {codes}; this script expects dcm2niix's L, A, S")
    return img


def sibling(flair: Path, suffix: str) -> Path:
    found = sorted(flair.parent.glob(f"*_{suffix}.nii.gz"))
    if len(found) != 1:
        raise SystemExit(f"{flair.parent}: expected one *_{suffix}.nii.gz, found {len(found)}; give it")
    return found[0]


def to_sitk(array_ijk: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A float32 SimpleITK image from an array indexed [i, j, k] and its RAS voxel-to-world affine."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array_ijk, (2, 1, 0)), dtype=np.float32))
    rot = LPS @ affine[:3, :3]
    spacing = np.linalg.norm(rot, axis=0)
    img.SetSpacing(spacing.tolist())
    img.SetDirection((rot / spacing).ravel().tolist())
    img.SetOrigin((LPS @ affine[:3, 3]).tolist())
    return img


def from_sitk(img: sitk.Image) -> np.ndarray:
    return np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))


# --- the authors' recipe (MATLAB imresize + center_crop) -------------------------------------------------


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    return (1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1) + (-0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2) * (
        (ax > 1) & (ax <= 2)
    )


def imresize_matrix(n_in: int, scale: float) -> np.ndarray:
    """MATLAB ``imresize(..., scale)`` along one axis (bicubic, enlargement) as an (n_out, n_in) matrix."""
    n_out = math.ceil(n_in * scale - 1e-9)
    u = np.arange(1, n_out + 1) / scale + 0.5 * (1 - 1 / scale)  # 1-based source coordinate
    idx = np.floor(u - 2)[:, None] + np.arange(6)[None, :]
    w = _cubic(u[:, None] - idx)
    w /= w.sum(1, keepdims=True)
    mirror = np.concatenate([np.arange(n_in), np.arange(n_in - 1, -1, -1)])  # symmetric border
    idx = mirror[((idx - 1) % (2 * n_in)).astype(int)]
    out = np.zeros((n_out, n_in))
    np.add.at(out, (np.repeat(np.arange(n_out), 6), idx.ravel()), w.ravel())
    return out


def crop_start(n: int) -> int:
    """0-based first index of the authors' ``center_crop`` (1-based start max(1, floor((n - 256) / 2)))."""
    return max(1, (n - KAGGLE_SIZE) // 2) - 1


class KaggleGrid:
    """The Kaggle slice grid of a reference volume (the raw T1) in DICOM display orientation.

    Display row = reversed second NIfTI axis (anterior->posterior), display column = first NIfTI axis
    (patient right->left); each slice is enlarged by 256 / min(rows, cols) and centre-cropped to 256 x 256.
    """

    def __init__(self, ref: nib.Nifti1Image):
        self.ni, self.nj, self.nk = ref.shape[:3]
        self.rows, self.cols = self.nj, self.ni
        self.scale = KAGGLE_SIZE / min(self.rows, self.cols)
        wr, wc = imresize_matrix(self.rows, self.scale), imresize_matrix(self.cols, self.scale)
        self.r0, self.c0 = crop_start(wr.shape[0]), crop_start(wc.shape[0])
        self.wr = wr[self.r0 : self.r0 + KAGGLE_SIZE]
        self.wc = wc[self.c0 : self.c0 + KAGGLE_SIZE]
        s = self.scale
        # Kaggle pixel (r, c) samples display position ((r + r0 + 0.5) / s - 0.5, (c + c0 + 0.5) / s - 0.5)
        to_ref = np.array(
            [
                [0.0, 1 / s, 0.0, (self.c0 + 0.5) / s - 0.5],
                [-1 / s, 0.0, 0.0, self.nj - 1 - ((self.r0 + 0.5) / s - 0.5)],
                [0.0, 0.0, 1.0, 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ]
        )
        self.affine = ref.affine @ to_ref  # Kaggle voxel [row, col, slice] -> RAS mm

    def display(self, vol_ijk: np.ndarray) -> np.ndarray:
        """(slices, rows, cols) display stack of a volume on the reference grid."""
        return np.transpose(vol_ijk[:, ::-1, :], (2, 1, 0))

    def make(self, vol_ijk: np.ndarray) -> np.ndarray:
        """The recipe before rounding: divide by the volume maximum, enlarge, crop, times 255 (float)."""
        return self.wr @ (self.display(vol_ijk) / vol_ijk.max()) @ self.wc.T * 255.0

    def nearest_sources(self) -> tuple[np.ndarray, np.ndarray]:
        """The reference display row / column each Kaggle row / column copies under nearest-neighbour."""
        s, n = self.scale, np.arange(KAGGLE_SIZE)
        rows = np.floor((n + self.r0 + 1) / s + 0.5 * (1 - 1 / s) + 0.5).astype(int) - 1
        cols = np.floor((n + self.c0 + 1) / s + 0.5 * (1 - 1 / s) + 0.5).astype(int) - 1
        return rows, cols


def to_uint8(x: np.ndarray) -> np.ndarray:
    """MATLAB ``im2uint8`` of ``x / 255``: round and saturate."""
    return np.clip(np.round(x), 0, 255)


# --- measures -------------------------------------------------------------------------------------------


def corr(a: np.ndarray, b: np.ndarray, inside: np.ndarray) -> float:
    return float(np.corrcoef(a[inside], b[inside])[0, 1])


def register(
    fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, seed: int, sampling: float = 0.05
) -> sitk.Transform:
    """Fixed-to-moving transform by Mattes mutual information, three levels (in-plane shrink 4, 2, 1)."""
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(sampling, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(2.0, 1e-4, 200, relaxationFactor=0.7)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2, 1, 0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(transform, inPlace=True)
    reg.Execute(fixed, moving)
    return transform


def rigid_then_affine(
    fixed: sitk.Image, moving: sitk.Image, seed: int
) -> tuple[sitk.Transform, sitk.Transform]:
    init = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    rigid = register(fixed, moving, sitk.Euler3DTransform(init), seed)
    affine = sitk.AffineTransform(3)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    return rigid, register(fixed, moving, affine, seed)


def describe_rigid(t: sitk.Euler3DTransform) -> str:
    angles = np.degrees([t.GetAngleX(), t.GetAngleY(), t.GetAngleZ()])
    shift = np.array(t.GetTranslation())
    return (
        f"rotation (x, y, z) {np.round(angles, 2).tolist()} deg ({np.degrees(rotation_angle(t)):.1f}),"
        f" translation (LPS) {np.round(shift, 2).tolist()} mm ({np.linalg.norm(shift):.1f})"
    )


def rotation_angle(t: sitk.Transform) -> float:
    """The total rotation angle (radians) of a 3D transform's matrix (its polar rotation part)."""
    u, _, vt = np.linalg.svd(np.array(t.GetMatrix()).reshape(3, 3))
    return float(np.arccos(np.clip((np.trace(u @ vt) - 1) / 2, -1, 1)))


def per_slice_2d(
    raw: np.ndarray, spacing: float, kaggle: np.ndarray, ks: np.ndarray, pixel: float, seed: int
) -> list[tuple[float, float]]:
    """Register raw display slice ks[k] to Kaggle slice k in 2D (similarity); (r, scale) for each k."""
    out = []
    for k in range(kaggle.shape[0]):
        fixed = sitk.GetImageFromArray(kaggle[k].astype(np.float32))
        fixed.SetSpacing((pixel, pixel))
        moving = sitk.GetImageFromArray(raw[ks[k]].astype(np.float32))
        moving.SetSpacing((spacing, spacing))
        init = sitk.CenteredTransformInitializer(
            fixed, moving, sitk.Similarity2DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
        )
        t = register(fixed, moving, sitk.Similarity2DTransform(init), seed, sampling=0.2)
        warped = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, t, sitk.sitkLinear, 0.0))
        inside = kaggle[k] > HEAD_THRESHOLD
        out.append((corr(warped, kaggle[k], inside) if inside.sum() > 100 else float("nan"), t.GetScale()))
    return out


def write_mask(mask_ijk: np.ndarray, like: nib.Nifti1Image, path: Path) -> None:
    """Write a uint8 mask with ``like``'s affine and shape: a temporary file in the folder, then a rename."""
    header = like.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1.0, 0.0)
    img = nib.Nifti1Image(mask_ijk.astype(np.uint8), like.affine, header)
    img.set_qform(like.affine, int(like.header["qform_code"]))
    img.set_sform(like.affine, int(like.header["sform_code"]) or 1)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp_", suffix=".nii.gz")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
    try:
        nib.save(img, tmp)
        os.link(tmp, path)  # fails if the path exists: never overwrites
    except FileExistsError:
        raise SystemExit(f"{path} appeared while writing; not overwritten") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# --- the four measurements ------------------------------------------------------------------------------


class Data:
    """The inputs: Kaggle channels and masks, raw volumes (float64 arrays [i, j, k]) and their images."""

    def __init__(self, args: argparse.Namespace):
        self.images, self.masks = load_kaggle(args.kaggle_patient)
        self.fl = load_las(args.raw_flair)
        self.t1 = load_las(args.raw_t1 or sibling(args.raw_flair, "t1"))
        self.t1c = load_las(args.raw_t1c or sibling(args.raw_flair, "t1c"))
        self.fla, self.t1a, self.t1ca = (
            np.asarray(x.dataobj, dtype=np.float64) for x in (self.fl, self.t1, self.t1c)
        )
        self.n = self.images.shape[0]
        if not self.fla.shape[2] == self.t1a.shape[2] == self.n:
            raise SystemExit(
                f"slice counts differ: Kaggle {self.n}, FLAIR {self.fla.shape[2]}, T1 {self.t1a.shape[2]}"
            )
        self.k0, self.k1, self.k2 = (self.images[..., c].astype(np.float64) for c in range(3))
        self.head = self.k1 > HEAD_THRESHOLD
        self.grid = KaggleGrid(self.t1)
        self.pixel = float(np.linalg.norm(self.grid.affine[:3, 0]))
        self.slice_mm = float(np.linalg.norm(self.grid.affine[:3, 2]))
        self.raw = to_sitk(self.fla, self.fl.affine)
        self.kgl = self.kaggle_image(self.k1)
        self.seed = args.seed

    def kaggle_image(self, stack: np.ndarray) -> sitk.Image:
        """A (slices, rows, cols) Kaggle stack as a SimpleITK image at its true position."""
        return to_sitk(np.transpose(stack, (1, 2, 0)).astype(np.float32), self.grid.affine)

    def on_kaggle(self, moving: sitk.Image, t: sitk.Transform) -> np.ndarray:
        """``moving`` resampled (trilinear) onto the Kaggle grid, (slices, rows, cols)."""
        return np.transpose(from_sitk(sitk.Resample(moving, self.kgl, t, sitk.sitkLinear, 0.0)), (2, 0, 1))


def grid_section(d: Data) -> None:
    g, k0 = d.grid, d.k0
    pred0 = to_uint8(g.make(d.t1a))
    print("\n1. The Kaggle grid is the raw T1 grid (channel 0 reproduced from the raw T1)")
    print(
        f"   T1 display {g.rows}x{g.cols} (rows A->P, cols R->L), isotropic scale 256/{min(g.rows, g.cols)}"
        f" = {g.scale:.4f}; crop of the enlarged slice (1-based): rows {g.r0 + 1}..{g.r0 + 256},"
        f" cols {g.c0 + 1}..{g.c0 + 256}"
    )
    print(
        f"   channel 0 vs the recipe: exact pixels {np.mean(pred0 == k0):.4f},"
        f" max |diff| {np.abs(pred0 - k0).max():.0f}, r {corr(pred0, k0, d.head):.5f};"
        f" T1 maximum {d.t1a.max():g} -> 255"
    )
    codes = "".join(nib.aff2axcodes(g.affine))
    print(
        f"   Kaggle voxel [row, col, slice] -> RAS mm (axis codes {codes},"
        f" {d.pixel:.4f} x {d.pixel:.4f} x {d.slice_mm:.3f} mm):"
    )
    for line in np.array2string(g.affine, precision=4, suppress_small=True).splitlines():
        print("     " + line)
    up = g.affine[2, 2] > 0
    print(
        f"   Kaggle slice k = T1 slice k-1; the slice axis points {'superior' if up else 'inferior'}, so"
        f" Kaggle slice 1 is the most {'inferior' if up else 'superior'}"
        f" (raw FLAIR third axis: {nib.aff2axcodes(d.fl.affine)[2]})"
    )


def flair_section(d: Data) -> sitk.Transform:
    """Correlations of the FLAIR mappings, slice correspondence, intensity relation; the affine transform."""
    k1, head, n = d.k1, d.head, d.n
    print("\n2. The FLAIR (channel 1) on the Kaggle grid; Pearson r inside the head (Kaggle FLAIR > 10)")
    fl_disp = KaggleGrid(d.fl).display(d.fla)  # (slices, rows A->P, cols R->L)
    rows, cols = fl_disp.shape[1:]
    plain = imresize_matrix(rows, 256 / rows)[:256] @ fl_disp @ imresize_matrix(cols, 256 / cols)[:256].T
    per_plain = [corr(plain[k], k1[k], head[k]) for k in range(n) if head[k].sum() > 100]
    print(
        f"   raw slice k-1, each slice resized to 256x256 (anisotropic): {corr(plain, k1, head):.3f}"
        f" (per slice: median {np.median(per_plain):.3f}, max {max(per_plain):.3f})"
    )
    recipe = KaggleGrid(d.fl).make(d.fla)
    print(f"   raw slice k-1, the T1 recipe (isotropic scale, centre crop): {corr(recipe, k1, head):.3f}")
    ident = sitk.Transform(3, sitk.sitkIdentity)
    print(f"   scanner space, no registration (trilinear): {corr(d.on_kaggle(d.raw, ident), k1, head):.3f}")
    rigid, affine = rigid_then_affine(d.kgl, d.raw, d.seed)
    fl_affine = d.on_kaggle(d.raw, affine)
    print(
        f"   3D rigid registration: {corr(d.on_kaggle(d.raw, rigid), k1, head):.4f}; {describe_rigid(rigid)}"
    )
    sv = np.linalg.svd(np.array(affine.GetMatrix()).reshape(3, 3))[1]
    print(
        f"   3D affine registration: {corr(fl_affine, k1, head):.4f}; matrix singular values"
        f" {np.round(sv, 4).tolist()}, rotation {np.degrees(rotation_angle(affine)):.1f} deg"
    )
    per = [corr(fl_affine[k], k1[k], head[k]) for k in range(n) if head[k].sum() > 100]
    print(f"   one transform for all slices: per-slice r min {min(per):.3f}, median {np.median(per):.3f}")

    # forward model: the FLAIR onto the raw T1 grid (trilinear), then the T1 recipe
    fl_t1 = from_sitk(sitk.Resample(d.raw, to_sitk(d.t1a, d.t1.affine), affine, sitk.sitkLinear, 0.0))
    fl_t1 = fl_t1.astype(np.float64)
    model = d.grid.make(fl_t1)
    pred1 = to_uint8(model)
    print(
        f"   forward model (affine onto the T1 grid, / max, enlarge, crop, round):"
        f" r {corr(model, k1, head):.4f},"
        f" mean |diff| {np.abs(pred1 - k1).mean():.2f}, exact {np.mean(pred1 == k1):.3f}"
    )
    inner = (k1 > 2) & (k1 < 250)
    values = model[inner] * fl_t1.max() / 255.0  # the resampled FLAIR (scanner units), enlarged
    slope, icpt = np.polyfit(values, k1[inner], 1)
    resid = k1[inner] - (slope * values + icpt)
    edges = np.quantile(values, np.linspace(0, 1, 6))
    fifth = np.clip(np.searchsorted(edges, values) - 1, 0, 4)
    bias = [float(np.median(resid[fifth == q])) for q in range(5)]
    print(
        f"   intensity: Kaggle = {slope:.4f} x FLAIR {icpt:+.2f} (fit where 2 < Kaggle < 250), i.e. 255 at"
        f" {(255 - icpt) / slope:.0f}; the resampled FLAIR's maximum is {fl_t1.max():.0f}"
        f" (raw {d.fla.max():g})"
    )
    print(
        f"   residual sd {resid.std():.2f}; median residual by fifths of the FLAIR value"
        f" {np.round(bias, 2).tolist()}; Kaggle FLAIR max {int(k1.max())}, pixels at 255:"
        f" {int((k1 == 255).sum())}"
    )

    # slice correspondence
    inv_fl = np.linalg.inv(d.fl.affine)

    def raw_index(points: np.ndarray) -> np.ndarray:
        """Raw FLAIR voxel coordinates of Kaggle voxel coordinates (N, 3) under the affine registration."""
        world = (d.grid.affine @ np.c_[points, np.ones(len(points))].T)[:3].T
        moved = np.array([affine.TransformPoint((LPS @ p).tolist()) for p in world]) @ LPS
        return (inv_fl @ np.c_[moved, np.ones(len(moved))].T)[:3].T

    zs = raw_index(np.array([[127.5, 127.5, k] for k in range(n)]))[:, 2]
    print(f"   Kaggle slice 1..{n} centre -> raw FLAIR slice index (0-based): {np.round(zs, 1).tolist()}")
    mid = n // 2
    rr, cc = np.nonzero(head[mid])
    zr = raw_index(np.c_[rr, cc, np.full(rr.size, mid)][::25])[:, 2]
    print(
        f"   the cut is oblique: under the head of Kaggle slice {mid + 1} the raw slice index runs"
        f" {zr.min():.1f}..{zr.max():.1f}"
    )
    corners = raw_index(np.array([[0.0, 0.0, mid], [255.0, 0.0, mid], [0.0, 255.0, mid]]))
    corners *= np.array(d.fl.header.get_zooms()[:3], dtype=np.float64)  # raw voxel axes in mm
    normal = np.cross(corners[1] - corners[0], corners[2] - corners[0])
    tilt = np.degrees(np.arccos(abs(normal[2]) / np.linalg.norm(normal)))
    print(f"   angle between the Kaggle slice planes and the raw FLAIR slice planes: {tilt:.1f} deg")
    ks = np.clip(np.round(zs).astype(int), 0, n - 1)
    two_d = per_slice_2d(fl_disp, float(d.fl.header.get_zooms()[0]), k1, ks, d.pixel, d.seed)
    r2 = [r for r, _ in two_d if np.isfinite(r)]
    s2 = [s for r, s in two_d if np.isfinite(r)]
    print(
        f"   2D similarity registration of the nearest raw slice, per slice: r median {np.median(r2):.3f}"
        f" (min {min(r2):.3f}, max {max(r2):.3f}); scale median {np.median(s2):.3f}"
    )
    return affine


def mask_section(d: Data, affine: sitk.Transform, output: Path) -> None:
    masks, n, g = d.masks, d.n, d.grid
    print("\n3. The Kaggle mask on the raw FLAIR grid")
    src_r, src_c = g.nearest_sources()
    nn_copy = all(
        (masks[:, a] == masks[:, a + 1]).all() for a in range(255) if src_r[a] == src_r[a + 1]
    ) and all((masks[:, :, a] == masks[:, :, a + 1]).all() for a in range(255) if src_c[a] == src_c[a + 1])
    native = np.zeros((n, g.rows, g.cols), bool)
    native[:, src_r[:, None], src_c[None, :]] = masks
    voxel_t1 = float(np.prod(d.t1.header.get_zooms()[:3]))
    kaggle_voxel = abs(np.linalg.det(g.affine[:3, :3]))
    print(
        f"   Kaggle mask: {int(masks.sum())} pixels x {d.pixel**2:.4f} mm2 x {d.slice_mm:.2f} mm ="
        f" {masks.sum() * kaggle_voxel / 1000:.2f} mL; a nearest-neighbour enlargement of a T1-grid mask:"
        f" {nn_copy} ({int(native.sum())} T1 voxels = {native.sum() * voxel_t1 / 1000:.2f} mL)"
    )
    inverse = affine.GetInverse()

    def to_raw(stack: np.ndarray, interpolator: int) -> np.ndarray:
        return from_sitk(sitk.Resample(d.kaggle_image(stack), d.raw, inverse, interpolator, 0.0))

    lin = to_raw(masks, sitk.sitkLinear) >= 0.5
    nn = to_raw(masks, sitk.sitkNearestNeighbor) > 0.5
    covered = to_raw(np.ones(masks.shape), sitk.sitkNearestNeighbor) > 0
    voxel_fl = float(np.prod(d.fl.header.get_zooms()[:3]))
    dice = 2 * (lin & nn).sum() / max(1, lin.sum() + nn.sum())
    print(
        f"   on the raw grid (linear, >= 0.5): {int(lin.sum())} voxels x {voxel_fl:.3f} mm3 ="
        f" {lin.sum() * voxel_fl / 1000:.2f} mL; nearest neighbour: {int(nn.sum())} voxels"
        f" ({nn.sum() * voxel_fl / 1000:.2f} mL), Dice with linear {dice:.3f}"
    )
    print(
        f"   raw slices with tumour (0-based): {sorted(set(np.nonzero(lin)[2].tolist()))};"
        f" raw voxels inside the Kaggle slab: {covered.mean():.3f}"
    )
    write_mask(lin, d.fl, output)
    print(f"   written {output} ({lin.shape}, uint8, the raw FLAIR's affine)")


def t1_section(d: Data) -> None:
    print("\n4. T1 and T1c on the Kaggle grid (channels 0 and 2)")
    ident = sitk.Transform(3, sitk.sitkIdentity)
    t1s, t1cs = to_sitk(d.t1a, d.t1.affine), to_sitk(d.t1ca, d.t1c.affine)
    r_t1 = corr(d.on_kaggle(t1s, ident), d.k0, d.k0 > HEAD_THRESHOLD)
    print(f"   T1, scanner space (trilinear; channel 0 is made from it, see 1.): {r_t1:.4f}")
    same = np.allclose(d.t1.affine, d.t1c.affine, atol=1e-3)
    kgl2 = d.kaggle_image(d.k2)
    head2 = d.k2 > HEAD_THRESHOLD
    r_id = corr(d.on_kaggle(t1cs, ident), d.k2, head2)
    rigid = sitk.Euler3DTransform()
    rigid.SetCenter(kgl2.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in kgl2.GetSize()]))
    register(kgl2, t1cs, rigid, d.seed)
    print(
        f"   T1c (header geometry identical to the T1: {same}): scanner space {r_id:.3f};"
        f" 3D rigid registration {corr(d.on_kaggle(t1cs, rigid), d.k2, head2):.4f}; {describe_rigid(rigid)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raw-flair", type=Path, required=True, help="raw TCIA FLAIR NIfTI (*_fla.nii.gz)")
    parser.add_argument("--kaggle-patient", type=Path, required=True, help="kaggle_3m/<patient> folder")
    parser.add_argument("--output-mask", type=Path, required=True, help="new NIfTI: the mask on the raw grid")
    parser.add_argument("--raw-t1", type=Path, help="raw pre-contrast T1 (default: *_t1.nii.gz beside it)")
    parser.add_argument("--raw-t1c", type=Path, help="raw post-contrast T1 (default: *_t1c.nii.gz beside it)")
    parser.add_argument("--threads", type=int, default=2, help="SimpleITK threads (default 2)")
    parser.add_argument("--seed", type=int, default=1, help="metric sampling seed (default 1)")
    args = parser.parse_args(argv)
    if args.output_mask.exists():
        raise SystemExit(f"{args.output_mask} exists; not overwritten")
    if not args.output_mask.parent.is_dir():
        raise SystemExit(f"{args.output_mask.parent}: no such folder")
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    start = time.time()
    d = Data(args)
    print(
        f"Kaggle {args.kaggle_patient.name}: {d.n} slices; raw FLAIR {d.fla.shape}, T1 {d.t1a.shape},"
        f" T1c {d.t1ca.shape}"
    )
    grid_section(d)
    affine = flair_section(d)
    mask_section(d, affine, args.output_mask)
    t1_section(d)
    print(f"\n{time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
