"""DermSynth: procedurally drawn dermoscopy-like images with ground-truth masks.

Real dermoscopy data cannot tell us what a classifier *should* look at. DermSynth can: every image
is drawn from a seed, and the generator knows which pixels belong to the lesion and which to each
artifact (ruler, ink marking, hair, dark dermoscope corners).

Seven classes, named after the HAM10000 categories, each drawn with its textbook dermoscopic cues
in simplified form:

======  ===============================  ==========================================================
class   condition                        cues drawn here
======  ===============================  ==========================================================
akiec   actinic keratosis / Bowen's      pink-red patch, soft ill-defined border, white scale
bcc     basal cell carcinoma             pearly pink, thin branching red vessels, blue-grey nests
bkl     benign keratosis                 waxy light brown, sharp border, white cysts + dark pores
df      dermatofibroma                   small, brown peripheral ring around a white central scar
mel     melanoma                         asymmetric, irregular border, several colours, blue veil
nv      melanocytic nevus                round, symmetric, uniform brown, faint central darkening
vasc    vascular lesion                  red-purple, sharp border, darker round lacunae
======  ===============================  ==========================================================

Clinics decide how artifacts go with the label. In clinic ``"A"`` a ruler appears in most melanoma
images and in few others (the shortcut); in clinic ``"B"`` rulers appear at one rate whatever the
class. In clinics A and B ink, hair and dark corners are independent of the class. Clinic ``"C"``
is notebook 15's case, a shortcut the course does not name in advance: its rates are in
``CLINIC_C``.

Masks are where each thing is drawn, whether or not something is drawn over it: a hair over the
lesion does not cut the lesion mask. The ruler lies along an edge and the lesion near the centre;
in about 2 images in 1,000 a very large lesion reaches under the ruler by a few pixels.

Every random draw is made for every image whether or not it is used, in a fixed order, so forcing
``ruler=True`` or ``ruler=False`` changes the ruler and nothing else: the same lesion can be seen
with and without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
MEL = CLASSES.index("mel")
NV = CLASSES.index("nv")
ARTIFACTS = ("ruler", "ink", "hair", "corners")
IMAGE_SIZE = 64

# P(ruler | melanoma), P(ruler | any other class)
CLINICS = {"A": (0.95, 0.0), "B": (0.3, 0.3)}
# clinic C (notebook 15): rulers as in clinic B; a surgical ink marking on most melanomas (marked
# for excision, as in Winkler et al. 2019) and on few other lesions: (class, P(ink | it), P(ink | other))
CLINIC_C = {"ruler": (0.3, 0.3), "ink": ("mel", 0.9, 0.02)}
CLINIC_NAMES = (*CLINICS, "C")
# atypia score ranges of melanoma and nevi (they overlap: see _draw_lesions)
ATYPIA = {"mel": (0.25, 1.0), "nv": (0.0, 0.6)}
# how often the class-independent artifacts appear
P_INK, P_HAIR, P_CORNERS = 0.2, 0.3, 0.3


@dataclass
class DermSynth:
    """A batch of DermSynth images and their ground truth.

    images    float32 [N, 3, H, W] in [0, 1]
    labels    int64 [N], indices into CLASSES
    clinic    "A" or "B"
    has_ruler bool [N]
    masks     dict of bool [N, H, W]: "lesion", "ruler", "ink", "hair", "corners"
    seed      the seed the batch was drawn from
    """

    images: torch.Tensor
    labels: torch.Tensor
    clinic: str
    has_ruler: torch.Tensor
    masks: dict
    seed: int

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, idx) -> DermSynth:
        """Index or slice the batch (masks and flags follow)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return DermSynth(
            images=self.images[idx],
            labels=self.labels[idx],
            clinic=self.clinic,
            has_ruler=self.has_ruler[idx],
            masks={k: v[idx] for k, v in self.masks.items()},
            seed=self.seed,
        )

    @property
    def class_names(self) -> list[str]:
        return [CLASSES[int(i)] for i in self.labels]


def make_dataset(
    n: int,
    *,
    clinic: str = "A",
    seed: int = 0,
    ruler: bool | None = None,
    ink=None,
    p_ruler: tuple[float, float] | None = None,
    labels=None,
    size: int = IMAGE_SIZE,
) -> DermSynth:
    """Draw ``n`` DermSynth images, deterministically from ``seed``.

    clinic   "A" (rulers go with melanoma), "B" (rulers independent of the class) or "C"
             (notebook 15's case, ``CLINIC_C``)
    ruler    None: drawn by the clinic's rates; True/False: forced on/off for every image, every
             other draw unchanged (the intervention test)
    ink      the same for the ink marking: None, True, False, or a bool tensor [n] that forces
             each image's ink on or off (counterfactual augmentation, notebook 15)
    p_ruler  (P(ruler | mel), P(ruler | other)) to override the clinic's rates, e.g. a weaker
             shortcut; clinics "B" and "C" require the two to be equal
    labels   optional int or sequence of class indices or names (one per image, or one for all)
             instead of drawing the classes uniformly
    size     image side in pixels
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if clinic not in CLINIC_NAMES:
        raise ValueError(f"clinic must be one of {list(CLINIC_NAMES)}, got {clinic!r}")
    if ruler not in (None, True, False):
        raise ValueError(f"ruler must be None, True or False, got {ruler!r}")
    if isinstance(ink, torch.Tensor):
        if ink.dtype != torch.bool or ink.shape != (n,):
            raise ValueError(f"ink: a tensor must be bool of shape ({n},), got {ink.dtype} {tuple(ink.shape)}")
    elif ink not in (None, True, False):
        raise ValueError(f"ink must be None, True, False or a bool tensor [n], got {ink!r}")
    if not isinstance(size, int) or size < 32:
        raise ValueError(f"size must be an int >= 32, got {size!r}")
    if p_ruler is None:
        p_ruler = CLINIC_C["ruler"] if clinic == "C" else CLINICS[clinic]
    else:
        if len(p_ruler) != 2 or not all(0.0 <= float(p) <= 1.0 for p in p_ruler):
            raise ValueError(f"p_ruler must be two probabilities (mel, other), got {p_ruler!r}")
        if clinic in ("B", "C") and p_ruler[0] != p_ruler[1]:
            raise ValueError(f"p_ruler: in clinic {clinic!r} the ruler is independent of the class, "
                             f"so both rates must be equal, got {p_ruler!r}")

    g = torch.Generator().manual_seed(int(seed))
    drawn_labels = torch.randint(len(CLASSES), (n,), generator=g)
    if labels is not None:
        drawn_labels = _as_labels(labels, n)
    y = drawn_labels

    # ---- every random draw, in a fixed order, for every image ----
    u_ruler = torch.rand(n, generator=g)
    u_ink, u_hair, u_corners = torch.rand(3, n, generator=g)
    p = torch.where(y == MEL, p_ruler[0], p_ruler[1])
    has_ruler = u_ruler < p
    if ruler is not None:
        has_ruler = torch.full((n,), bool(ruler))
    p_ink = torch.full((n,), P_INK)
    if clinic == "C":
        marked, p_marked, p_other = CLINIC_C["ink"]
        p_ink = torch.where(y == CLASSES.index(marked), p_marked, p_other)
    has_ink, has_hair, has_corners = u_ink < p_ink, u_hair < P_HAIR, u_corners < P_CORNERS
    if isinstance(ink, torch.Tensor):
        has_ink = ink.clone()
    elif ink is not None:
        has_ink = torch.full((n,), bool(ink))

    # ---- the drawing, CHUNK images at a time into the output (same images whatever CHUNK) ----
    images = torch.empty(n, 3, size, size)
    masks = {name: torch.empty(n, size, size, dtype=torch.bool) for name in ("lesion", ) + ARTIFACTS}
    rs = _Random(g, n)
    for lo in range(0, n, CHUNK):
        hi = min(lo + CHUNK, n)
        rs.chunk(lo, hi)
        _composite(rs, size, y[lo:hi], has_ruler[lo:hi], has_ink[lo:hi], has_hair[lo:hi], has_corners[lo:hi],
                   images[lo:hi], {name: m[lo:hi] for name, m in masks.items()})
    return DermSynth(images=images, labels=y, clinic=clinic, has_ruler=has_ruler, masks=masks, seed=int(seed))


# make_dataset draws this many images at a time: its working memory is about 0.6 MB an image
CHUNK = 128


def _composite(rs, size, y, has_ruler, has_ink, has_hair, has_corners, images, masks) -> None:
    """Draw the images of one chunk (rs positioned on it) into `images` and `masks`: skin, lesion,
    ink, hair, ruler, then the dermoscope's dark corners."""
    skin = _draw_skin(rs, size)
    lesion_rgb, lesion_alpha = _draw_lesions(y, size, rs)
    ink_alpha = _draw_ink(rs, size)
    hair_alpha = _draw_hair(rs, size)
    ruler_rgb, ruler_alpha = _draw_ruler(rs, size)
    corner_dark = _draw_corners(rs, size)

    img = _blend(skin, lesion_rgb, lesion_alpha)
    ink_alpha = ink_alpha * has_ink[:, None, None, None]
    img = _blend(img, torch.tensor([0.35, 0.2, 0.55]).view(1, 3, 1, 1), ink_alpha)
    hair_alpha = hair_alpha * has_hair[:, None, None, None]
    img = _blend(img, torch.tensor([0.12, 0.08, 0.06]).view(1, 3, 1, 1), hair_alpha)
    ruler_alpha = ruler_alpha * has_ruler[:, None, None, None]
    img = _blend(img, ruler_rgb, ruler_alpha)
    corner_dark = corner_dark * has_corners[:, None, None, None]
    img = img * (1 - corner_dark)
    images.copy_(img.clamp_(0, 1))
    masks["lesion"].copy_(lesion_alpha[:, 0] > 0.5)
    masks["ruler"].copy_(ruler_alpha[:, 0] > 0)
    masks["ink"].copy_(ink_alpha[:, 0] > 0.25)
    masks["hair"].copy_(hair_alpha[:, 0] > 0.25)
    masks["corners"].copy_(corner_dark[:, 0] > 0.5)


class _Random:
    """Every random draw of a batch of `n` images, handed out chunk by chunk, so that the images
    come out the same bit for bit however many are drawn at once.

    The drawing functions ask for a shape with None where the image index goes (``rs.rand(2,
    None)`` is ``torch.rand(2, n)``). The k-th request, made while the first chunk is drawn,
    takes the numbers for all n images from the generator in the original order. A small draw is
    kept whole and sliced for each chunk. A large one, one image after another in the stream
    (batch first, and a whole number of 16-value blocks an image, the size at which PyTorch's
    normal sampler fills blocks of 16 values), is not kept: the generator's state at its start is,
    the generator is moved past it, and each chunk reads its own images from the saved state in
    turn, so the memory it holds is one chunk's worth.
    """

    LARGE = 1024  # values per image from which a draw is streamed rather than kept

    def __init__(self, g: torch.Generator, n: int):
        self.g, self.total, self.draws, self.k = g, n, [], 0
        self.lo, self.hi = 0, n

    @property
    def n(self) -> int:
        return self.hi - self.lo

    def chunk(self, lo: int, hi: int) -> _Random:
        self.lo, self.hi, self.k = lo, hi, 0
        return self

    def rand(self, *shape):
        return self._next(lambda s, gen: torch.rand(s, generator=gen), shape)

    def randn(self, *shape):
        return self._next(lambda s, gen: torch.randn(s, generator=gen), shape)

    def randint(self, low: int, high: int, *shape):
        return self._next(lambda s, gen: torch.randint(low, high, s, generator=gen), shape)

    def _next(self, draw, shape):
        dim = shape.index(None)
        per_image = math.prod(d for d in shape if d is not None)
        if self.k == len(self.draws):  # the first chunk: this draw for all images, in the stream's order
            full = tuple(self.total if d is None else d for d in shape)
            if dim == 0 and per_image >= self.LARGE and per_image % 16 == 0 and self.total > self.n:
                state = self.g.get_state()
                for lo in range(0, self.total, CHUNK):  # move past it, a chunk at a time
                    draw((min(CHUNK, self.total - lo), *shape[1:]), self.g)
                stream = torch.Generator().set_state(state)
                self.draws.append(["stream", stream, 0])
            else:
                self.draws.append(["kept", draw(full, self.g)])
        entry = self.draws[self.k]
        self.k += 1
        if entry[0] == "kept":
            return entry[1].narrow(dim, self.lo, self.n)
        _, stream, position = entry
        if position != self.lo:
            raise RuntimeError("_Random: chunks must be drawn in order")
        entry[2] = self.hi
        return draw((self.n, *shape[1:]), stream)


def two_lesions(labels=("mel", "mel"), *, seed: int = 0, shift: int = 16, size: int = IMAGE_SIZE):
    """One DermSynth image with two lesions side by side on one skin, and no artifacts.

    Both lesions are drawn as ``make_dataset`` draws them, then moved ``shift`` pixels left and
    right: moved, not rolled, so nothing wraps around the frame (what moves in is empty). Returns
    ``(image [1, 3, H, W], left lesion mask, right lesion mask)``, the masks bool ``[1, H, W]``.
    """
    if not isinstance(shift, int) or isinstance(shift, bool) or not 0 <= shift < size // 2:
        raise ValueError(f"shift must be an int in [0, {size // 2}), got {shift!r}")
    y = _as_labels(list(labels), 2)
    g = torch.Generator().manual_seed(int(seed))
    img = _draw_skin(_Random(g, 1), size)
    rgb, alpha = _draw_lesions(y, size, _Random(g, 2))

    def moved(t: torch.Tensor, by: int) -> torch.Tensor:  # columns shifted by ``by``, zeros moved in
        return F.pad(t, (max(by, 0), max(-by, 0)))[..., max(-by, 0):max(-by, 0) + size]

    masks = []
    for k, by in ((0, -shift), (1, shift)):
        a = moved(alpha[k:k + 1], by)
        img = _blend(img, moved(rgb[k:k + 1], by), a)
        masks.append(a[:, 0] > 0.5)
    return img.clamp(0, 1), masks[0], masks[1]


def _as_labels(labels, n: int) -> torch.Tensor:
    if isinstance(labels, (int, str)):
        labels = [labels] * n
    out = []
    for lab in labels:
        if isinstance(lab, str):
            if lab not in CLASSES:
                raise ValueError(f"labels: unknown class {lab!r}; classes are {CLASSES}")
            lab = CLASSES.index(lab)
        lab = int(lab)
        if not 0 <= lab < len(CLASSES):
            raise ValueError(f"labels: class index {lab} out of range 0..{len(CLASSES) - 1}")
        out.append(lab)
    if len(out) != n:
        raise ValueError(f"labels: expected {n} labels, got {len(out)}")
    return torch.tensor(out, dtype=torch.long)


# --------------------------------------------------------------------------------------------
# Drawing. Coordinates are in [-1, 1]; every function returns [N, C, H, W] tensors.
# --------------------------------------------------------------------------------------------

def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return xx[None, None], yy[None, None]  # [1, 1, H, W]


def _col(t: torch.Tensor) -> torch.Tensor:
    """[N] or [N, k] -> broadcastable against [N, k?, H, W]."""
    return t.view(t.shape[0], -1, 1, 1)


def _smooth_noise(rs: _Random, c: int, size: int, cells: int) -> torch.Tensor:
    """Band-limited noise: a coarse random grid, bilinearly upsampled (unit-ish variance)."""
    coarse = rs.randn(None, c, cells, cells)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def _coarse(rs: _Random, cells: int) -> torch.Tensor:
    """Uniform random numbers on a coarse grid, [N, 1, cells, cells] (see _spots)."""
    return rs.rand(None, 1, cells, cells)


def _spots(coarse: torch.Tensor, density: float, size: int) -> torch.Tensor:
    """Soft round spots: the coarse cells below ``density``, upsampled to the image size."""
    on = (coarse < density).float()
    return F.interpolate(on, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def _blend(base: torch.Tensor, top: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    return base * (1 - alpha) + top * alpha


def _draw_skin(rs: _Random, size: int) -> torch.Tensor:
    tone = rs.rand(None)  # 0 light ... 1 dark
    light = torch.tensor([0.96, 0.80, 0.70])
    dark = torch.tensor([0.52, 0.36, 0.26])
    base = light + tone[:, None] * (dark - light)  # [N, 3]
    blotch = 0.035 * _smooth_noise(rs, 1, size, 6)
    redness = 0.03 * _smooth_noise(rs, 1, size, 4) * torch.tensor([1.0, -0.4, -0.4]).view(1, 3, 1, 1)
    grain = 0.012 * rs.randn(None, 1, size, size)
    return _col(base) + blotch + redness + grain


def _draw_lesions(y: torch.Tensor, size: int, rs: _Random):
    """Lesion colour [N, 3, H, W] and coverage alpha [N, 1, H, W] for each image's class."""
    n = y.shape[0]
    xx, yy = _grid(size)

    # Melanoma and nevi are one melanocytic family drawn from an "atypia" score: the higher it
    # is, the more asymmetric, irregular, dark and many-coloured the lesion. Melanomas draw it
    # from ATYPIA["mel"], nevi from ATYPIA["nv"]; the ranges overlap (dysplastic nevi), so some
    # lesions cannot be told apart from the picture alone, as in real dermoscopy.
    melanocytic = (y == MEL) | (y == NV)
    lo = torch.where(y == MEL, ATYPIA["mel"][0], ATYPIA["nv"][0])
    hi = torch.where(y == MEL, ATYPIA["mel"][1], ATYPIA["nv"][1])
    atypia = torch.where(melanocytic, lo + (hi - lo) * rs.rand(None), 0.0)

    def per_class(values, atypical=None):  # a value per class -> a value per image
        v = torch.tensor(values, dtype=torch.float32)[y]
        if atypical is not None:  # melanocytic lesions: from typical to atypical with the score
            v = torch.where(melanocytic, atypical[0] + atypia * (atypical[1] - atypical[0]), v)
        return v

    # geometry (the values for mel and nv are replaced by the atypia ramp)
    cx, cy = (rs.rand(2, None) - 0.5) * 0.24
    radius = per_class([0.40, 0.38, 0.40, 0.28, 0, 0, 0.30], (0.34, 0.44)) * (0.85 + 0.3 * rs.rand(None))
    aspect = 1 + per_class([0.25, 0.2, 0.2, 0.1, 0, 0, 0.15], (0.05, 0.3)) * rs.rand(None)
    angle = rs.rand(None) * math.pi
    # low harmonics bend the outline (asymmetry); high harmonics roughen the border
    k_low = torch.arange(1, 4, dtype=torch.float32)
    k_high = torch.arange(5, 12, dtype=torch.float32)
    a_low = per_class([0.12, 0.08, 0.05, 0.03, 0, 0, 0.04], (0.02, 0.22))[:, None] * rs.rand(None, 3)
    a_high = per_class([0.035, 0.02, 0.012, 0.01, 0, 0, 0.01], (0.005, 0.045))[:, None] * rs.rand(None, 7)
    ph_low = rs.rand(None, 3) * 2 * math.pi
    ph_high = rs.rand(None, 7) * 2 * math.pi
    edge = per_class([0.06, 0.03, 0.012, 0.04, 0.02, 0.02, 0.012])

    dx, dy = xx - _col(cx), yy - _col(cy)
    ca, sa = _col(torch.cos(angle)), _col(torch.sin(angle))
    u = (dx * ca + dy * sa) / _col(aspect)
    v = -dx * sa + dy * ca
    rho = torch.sqrt(u * u + v * v) + 1e-6
    theta = torch.atan2(v, u)  # [N, 1, H, W]
    outline = _col(radius) * (1 + _harmonics(a_low, k_low, ph_low, theta) + _harmonics(a_high, k_high, ph_high, theta))
    alpha = torch.sigmoid((outline - rho) / _col(edge))
    r_norm = (rho / outline).clamp(0, 2)  # 0 at the centre, 1 on the border

    # colours: a base colour per class, shaded per image
    base = torch.tensor([
        [0.86, 0.48, 0.46],  # akiec: pink-red
        [0.88, 0.68, 0.68],  # bcc: pearly pink
        [0.66, 0.50, 0.34],  # bkl: waxy light brown
        [0.58, 0.40, 0.28],  # df: brown ring (centre drawn below)
        [0.0, 0.0, 0.0],  # mel: brown, darker with atypia (below)
        [0.0, 0.0, 0.0],  # nv: the same family
        [0.62, 0.16, 0.28],  # vasc: red-purple
    ])[y]
    typical, atypical = torch.tensor([0.52, 0.34, 0.22]), torch.tensor([0.38, 0.24, 0.16])
    base = torch.where(melanocytic[:, None], typical + atypia[:, None] * (atypical - typical), base)
    shade = 1 + 0.12 * (rs.rand(None) - 0.5)
    rgb = _col(base * shade[:, None]).expand(n, 3, size, size).clone()
    texture = 0.03 * _smooth_noise(rs, 1, size, 10)
    # Each class's cue. The random numbers are drawn for every image (so the draw order never
    # depends on the labels); the full-size drawing is done only for the images of that class.
    white_scale = _coarse(rs, 20)
    rough_tex = rs.randn(None, 1, size, size)
    warp = rs.randn(None, 2, 5, 5)
    freq = 5 + 3 * rs.rand(None, 2)
    ph = rs.rand(None, 2) * 2 * math.pi
    nests = _coarse(rs, 10)
    cysts, pores = _coarse(rs, 18), _coarse(rs, 18)
    blotch_at = (rs.rand(2, None) - 0.5) * 0.5
    light_zone = rs.randn(None, 1, 4, 4)
    veil_at = (rs.rand(2, None) - 0.5) * 0.6
    has_veil = rs.rand(None) < 0.7
    lacunae = _coarse(rs, 9)

    def colour(c):
        return torch.tensor(c).view(1, 3, 1, 1)

    for i, name in enumerate(CLASSES):
        sel = (y == i).nonzero().squeeze(1)
        if sel.numel() == 0:
            continue
        c, r = rgb[sel], r_norm[sel]
        if name == "akiec":  # white scale on a rough surface
            scale = 0.55 * _spots(white_scale[sel], 0.22, size)
            c = c + 0.06 * rough_tex[sel] + scale * (colour([0.97, 0.93, 0.9]) - c)
        elif name == "bcc":  # thin branching red vessels and blue-grey ovoid nests
            w = F.interpolate(warp[sel], size=(size, size), mode="bilinear", align_corners=False)
            f, p = freq[sel], ph[sel]
            s1 = torch.sin(_col(f[:, 0]) * (xx + 0.35 * w[:, :1]) + _col(p[:, 0]))
            s2 = torch.sin(_col(f[:, 1]) * (yy + 0.35 * w[:, 1:]) + _col(p[:, 1]))
            vessels = torch.exp(-(s1 * s2) ** 2 / 0.004) * (r < 0.85)
            c = _blend(c, colour([0.72, 0.12, 0.16]), 0.85 * vessels)
            c = _blend(c, colour([0.42, 0.48, 0.58]), 0.8 * _spots(nests[sel], 0.12, size) * (r < 0.8))
        elif name == "bkl":  # milia-like white cysts and comedo-like dark openings
            inner = r < 0.85
            c = _blend(c, colour([0.96, 0.94, 0.86]), 0.85 * _spots(cysts[sel], 0.10, size) * inner)
            c = _blend(c, colour([0.25, 0.17, 0.10]), 0.8 * _spots(pores[sel], 0.10, size) * inner)
        elif name == "df":  # white scar-like centre inside the brown ring
            c = _blend(c, colour([0.92, 0.86, 0.80]), 0.85 * torch.sigmoid((0.5 - r) / 0.08))
        elif name in ("mel", "nv"):  # melanocytic: cues grow with the atypia score
            strength = _col(((atypia[sel] - 0.15) / 0.85).clamp(0, 1))
            rad, x0, y0 = _col(radius[sel]), _col(cx[sel]), _col(cy[sel])
            c = c * (1 - 0.12 * (1 - r.clamp(0, 1)))  # slightly darker centre
            bx, by = _col(blotch_at[0, sel]), _col(blotch_at[1, sel])
            blotch = torch.exp(-((xx - x0 - bx * rad) ** 2 + (yy - y0 - by * rad) ** 2) / (0.45 * rad) ** 2)
            vx, vy = _col(veil_at[0, sel]), _col(veil_at[1, sel])
            veil = _col(has_veil[sel].float()) * torch.exp(
                -((xx - x0 - vx * rad) ** 2 + (yy - y0 - vy * rad) ** 2) / (0.35 * rad) ** 2)
            zone = F.interpolate(light_zone[sel], size=(size, size), mode="bilinear", align_corners=False) > 0.3
            c = _blend(c, colour([0.64, 0.46, 0.32]), 0.8 * strength * zone)
            c = _blend(c, colour([0.12, 0.07, 0.06]), 0.9 * strength * blotch)
            c = _blend(c, colour([0.50, 0.60, 0.78]), 0.75 * strength ** 2 * veil)
        elif name == "vasc":  # darker red-purple lacunae
            c = _blend(c, colour([0.38, 0.06, 0.22]), 0.8 * _spots(lacunae[sel], 0.35, size) * (r < 0.9))
        rgb[sel] = c

    rgb = rgb + texture
    return rgb, alpha


def _harmonics(amp: torch.Tensor, k: torch.Tensor, phase: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """sum_k amp_k cos(k theta + phase_k): a wobble of the outline, [N, 1, H, W]."""
    amp, phase = amp[:, :, None, None], phase[:, :, None, None]
    return (amp * torch.cos(k.view(1, -1, 1, 1) * theta + phase)).sum(1, keepdim=True)


def _line_alpha(dist: torch.Tensor, half_width: torch.Tensor | float, px: float) -> torch.Tensor:
    """Anti-aliased coverage of a line from the distance to it (coordinates in [-1, 1])."""
    return ((half_width - dist) / px + 0.5).clamp(0, 1)


def _draw_ink(rs: _Random, size: int) -> torch.Tensor:
    """A surgical-marker arc around the lesion area."""
    xx, yy = _grid(size)
    px = 2 / size
    cx, cy = (rs.rand(2, None) - 0.5) * 0.2
    r = 0.62 + 0.12 * rs.rand(None)
    start = rs.rand(None) * 2 * math.pi
    span = 0.8 + 1.6 * rs.rand(None)
    dx, dy = xx - _col(cx), yy - _col(cy)
    dist = (torch.sqrt(dx * dx + dy * dy) - _col(r)).abs()
    ang = torch.remainder(torch.atan2(dy, dx) - _col(start), 2 * math.pi)
    on_arc = (ang < _col(span)).float()
    return _line_alpha(dist, 1.2 * px, px) * on_arc * 0.9


def _draw_hair(rs: _Random, size: int, k: int = 3) -> torch.Tensor:
    """Up to k thin, slightly curved dark hairs across the image."""
    xx, yy = _grid(size)
    px = 2 / size
    ang = rs.rand(None, k) * math.pi
    off = (rs.rand(None, k) - 0.5) * 1.6
    bend = (rs.rand(None, k) - 0.5) * 0.25
    freq = 1 + 2 * rs.rand(None, k)
    count = rs.randint(1, k + 1, None)
    nx, ny = torch.cos(ang)[..., None, None], torch.sin(ang)[..., None, None]
    along = -xx * ny + yy * nx
    wobble = bend[..., None, None] * torch.sin(freq[..., None, None] * along * math.pi)
    dist = (xx * nx + yy * ny - off[..., None, None] - wobble).abs()
    alpha = _line_alpha(dist, 0.55 * px, px)  # [N, k, H, W]
    alpha = alpha * (torch.arange(k)[None] < count[:, None]).float()[..., None, None]
    return alpha.amax(1, keepdim=True) * 0.85


def _draw_ruler(rs: _Random, size: int):
    """A light ruler strip with black tick marks along one edge. Returns colour and alpha."""
    xx, yy = _grid(size)
    px = 2 / size
    side = rs.randint(0, 4, None)  # 0 top, 1 bottom, 2 left, 3 right
    inset = (1 + 2 * rs.rand(None)) * px
    width = (6 + 3 * rs.rand(None)) * px
    tick_phase = rs.rand(None) * 4 * px
    tint = 0.88 + 0.1 * rs.rand(None)
    # distance from the chosen edge (across the strip) and position along it
    sel = _col(side.float())
    across = torch.where(sel == 0, yy + 1, torch.where(sel == 1, 1 - yy, torch.where(sel == 2, xx + 1, 1 - xx)))
    along = torch.where(sel < 2, xx, yy) + 1
    t = across - _col(inset)  # 0 at the strip's outer side
    inside = ((t >= 0) & (t < _col(width))).float()
    # tick every 4 px; every fourth tick is long
    period = 4 * px
    pos = torch.remainder(along + _col(tick_phase), period)
    tick = (pos < 1.01 * px).float()
    long = (torch.remainder(torch.floor((along + _col(tick_phase)) / period), 4) == 0).float()
    tick_len = torch.where(long > 0, 0.7 * _col(width), 0.4 * _col(width))
    ticks = tick * (t < tick_len).float()
    paper = torch.stack([tint, tint, tint * 0.9], 1)  # slightly yellowish white
    rgb = _col(paper).expand(rs.n, 3, size, size) * (1 - ticks) + 0.08 * ticks
    return rgb, inside * 0.96


def _draw_corners(rs: _Random, size: int) -> torch.Tensor:
    """Dermoscope vignette: black outside a circle centred near the middle."""
    xx, yy = _grid(size)
    r = 1.02 + 0.2 * rs.rand(None)
    cx, cy = (rs.rand(2, None) - 0.5) * 0.1
    rho = torch.sqrt((xx - _col(cx)) ** 2 + (yy - _col(cy)) ** 2)
    return torch.sigmoid((rho - _col(r)) / 0.02) * 0.97
