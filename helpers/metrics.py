"""Scoring an attribution map against DermSynth's ground-truth masks.

Two numbers recur through the course:

- ``mask_mass(attr, mask)``: the share of the map's magnitude that falls inside the mask, per image.
  A map that spreads evenly over the image scores the mask's own share of the image
  (``mask_share(mask)``), so always read the two side by side: a ruler mass of 0.30 means a lot
  when the ruler is 12% of the image.
- ``pointing_game(attr, mask)``: is the map's largest value inside the mask, per image (a peak
  inside and one outside within ``PEAK_TOL`` of each other are a tie, scored 0.5, so round-off
  cannot move the answer).
"""

from __future__ import annotations

import torch

from .report import RTOL, strict

# two peaks within this share of the maximum are a tie: round-off ties of an upsampled map's plateau
# are below 1e-6, and round-off moves a map's values by about 1e-5 between CPUs
PEAK_TOL = 5e-4


def _as_maps(attr: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring attr ([B,C,H,W], [B,1,H,W] or [B,H,W]) and mask ([B,H,W] or [B,1,H,W]) to [B, H, W]."""
    if not isinstance(attr, torch.Tensor):
        raise TypeError(f"attr must be a tensor, got {type(attr).__name__}")
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a tensor, got {type(mask).__name__}")
    if attr.dim() == 4:
        attr = attr.abs().sum(1)  # magnitude summed over channels
    elif attr.dim() == 3:
        attr = attr.abs()
    else:
        raise ValueError(f"attr must be [B, C, H, W] or [B, H, W], got shape {tuple(attr.shape)}")
    if mask.dim() == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.dim() != 3:
        raise ValueError(f"mask must be [B, H, W], got shape {tuple(mask.shape)}")
    if mask.shape != attr.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the attribution map "
                         f"{tuple(attr.shape)} (resize the map to the input first)")
    return attr.detach().float(), mask.bool()


def mask_mass(attr: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Share of |attr| inside ``mask``, per image: sum over the mask / sum over the image.

    attr  [B, C, H, W] (channels summed in magnitude), [B, 1, H, W] or [B, H, W]
    mask  bool [B, H, W]
    Returns float [B] in [0, 1]; an all-zero map gets NaN (it points nowhere).
    """
    a, m = _as_maps(attr, mask)
    total = a.sum((1, 2))
    inside = (a * m).sum((1, 2))
    return torch.where(total > 0, inside / total.clamp_min(1e-30), torch.full_like(total, float("nan")))


def mask_share(mask: torch.Tensor) -> torch.Tensor:
    """The mask's share of the image, per image: what a uniform map would score in mask_mass."""
    if mask.dim() == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.dim() != 3:
        raise ValueError(f"mask must be [B, H, W], got shape {tuple(mask.shape)}")
    return mask.float().mean((1, 2))


def pointing_game(attr: torch.Tensor, mask: torch.Tensor, tol: float = PEAK_TOL) -> torch.Tensor:
    """Whether the map's largest magnitude lies inside ``mask``, per image: float [B] of 1, 0 or 0.5.

    The map's largest value inside the mask is compared with its largest value outside: 1 when
    the inside wins, 0 when the outside wins, and 0.5 (a tie) when the two are within ``tol`` of
    the maximum. Which of two tied pixels is "the" maximum is decided by round-off, so it differs
    between CPUs; an upsampled map has plateaus of tied pixels and a superpixel map is flat on
    each segment, so ties are common. The rule looks at two numbers per image, so only an image
    whose two maxima differ by almost exactly ``tol`` could score differently on another machine,
    and under ``COURSE_STRICT=1`` (``make execute``) such an image is refused. An all-zero map
    scores NaN (it points nowhere).
    """
    if isinstance(tol, bool) or not isinstance(tol, float | int) or not 0 <= tol < 1:
        raise ValueError(f"tol must be a number in [0, 1), got {tol!r}")
    a, m = _as_maps(attr, mask)
    flat, inside = a.flatten(1), m.flatten(1)
    low = torch.tensor(-1.0)  # below every magnitude: an empty side never wins
    best_in = torch.where(inside, flat, low).amax(1)
    best_out = torch.where(~inside, flat, low).amax(1)
    top = torch.maximum(best_in, best_out)
    score = torch.where(best_in > best_out, 1.0, 0.0)
    gap = (best_in - best_out).abs() / top.clamp_min(1e-30)
    score = torch.where(gap <= tol, 0.5, score)
    if strict():  # executing for commit: no image may sit within round-off of the tie threshold
        near = ((gap - tol).abs() < RTOL) & (top > 0)
        if near.any():
            i = int(near.nonzero()[0, 0])
            raise ValueError(f"pointing_game: image {i}'s largest values inside and outside the mask differ by "
                             f"{gap[i].item():.2e} of the maximum, within round-off of the tie threshold tol={tol:g}: "
                             "another machine could score it differently; pass another tol")
    return torch.where(top > 0, score, torch.full_like(score, float("nan")))


def mass_summary(attr: torch.Tensor, masks: dict, names=("ruler", "lesion"), pointing: str = "share") -> dict:
    """Batch means of what every method notebook reports, for each named mask:

    "<name> mass"      mean mask_mass (share of |attr| inside the mask)
    "<name> share"     mean share of the image the mask covers (what a uniform map scores)
    "<name> pointing"  share of images whose map peaks inside the mask (pointing game, ties 0.5)

    pointing="count" gives the pointing game as a number of images instead, under the key
    "<name> pointing (of N)": over a few images a share is a fraction like 6/16 = 0.375 that sits on
    a rounding boundary, and a count prints exactly. Images whose mask is empty are left out of
    that mask's figures.
    """
    if pointing not in ("share", "count"):
        raise ValueError(f"pointing must be 'share' or 'count', got {pointing!r}")
    out = {}
    for name in names:
        mask = masks[name]
        present = mask.flatten(1).any(1)
        if not present.any():
            raise ValueError(f"masks[{name!r}] is empty for every image")
        a, m = attr[present], mask[present]
        out[f"{name} mass"] = mask_mass(a, m).nanmean().item()
        out[f"{name} share"] = mask_share(m).mean().item()
        scores = pointing_game(a, m)
        if pointing == "count":
            out[f"{name} pointing (of {int(scores.isfinite().sum())})"] = scores.nansum().item()
        else:
            out[f"{name} pointing"] = scores.nanmean().item()
    return out


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 0 .. n-1 along each row of ``values`` [B, n]; tied values share the mean of their ranks."""
    b, n = values.shape
    ordered, order = values.sort(dim=1)
    new_value = torch.ones_like(ordered, dtype=torch.bool)
    new_value[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    group = new_value.long().cumsum(1) - 1 + n * torch.arange(b, device=values.device)[:, None]  # unique per row
    position = torch.arange(n, device=values.device, dtype=torch.float64).expand(b, n)
    first = torch.full((b * n,), float(n), dtype=torch.float64, device=values.device)
    first = first.scatter_reduce(0, group.flatten(), position.flatten(), "amin")
    count = torch.bincount(group.flatten(), minlength=b * n).double()
    shared = (first + (count - 1) / 2)[group]  # the mean rank of each value's group, in sorted order
    return torch.empty_like(shared).scatter_(1, order, shared)


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per image between two maps ``[B, ...]``: the Pearson correlation
    of their ranks, tied values given the mean of their ranks (as ``scipy.stats.spearmanr`` does).

    1 means the two maps order the pixels identically; 0 means unrelated orderings. Ties matter:
    a Grad-CAM map after its ReLU is mostly exact zeros, and ranking those by position instead
    would invent an order that both maps share. A map that is constant over an image has no
    ordering; its correlation is NaN.
    """
    if a.shape != b.shape or a.dim() < 2:
        raise ValueError(f"a and b must be batches of maps of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    ra, rb = _average_ranks(a.detach().flatten(1)), _average_ranks(b.detach().flatten(1))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return ((ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1))).float()


def edge_strength(images: torch.Tensor) -> torch.Tensor:
    """The Sobel gradient magnitude of the grey image, ``[B, 1, H, W]``: a "map" that never looks at
    the model, the control that notebooks 12 and 13 hold attribution maps against."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a [B, C, H, W] tensor, got {getattr(images, 'shape', type(images))}")
    grey = images.detach().mean(1, keepdim=True)
    k = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=grey.dtype, device=grey.device)
    padded = torch.nn.functional.pad(grey, (1, 1, 1, 1), mode="replicate")
    gx = torch.nn.functional.conv2d(padded, k.view(1, 1, 3, 3))
    gy = torch.nn.functional.conv2d(padded, k.T.reshape(1, 1, 3, 3))
    return (gx ** 2 + gy ** 2).sqrt()
