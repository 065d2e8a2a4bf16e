"""The debugging playbook (notebook 15): detect, corroborate, fix, verify.

Most of the playbook reuses the course's methods; what is new here:

- ``sliced_accuracy``: accuracy on every slice of a test set (clinic, class, each artifact on/off),
  the first look that needs no attribution at all;
- ``artifact_audit``: an attribution method's mass on every artifact mask, against its area share;
- ``spray``: Spectral Relevance Analysis (Lapuschkin et al. 2019, "Unmasking Clever Hans predictors
  and assessing what machines really learn", Nature Communications 10:1096): cluster many
  attribution maps by their shape, without masks, to find the group of images where the model uses
  something no one told you about.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .contract import check_finite
from .metrics import mask_mass, mask_share


def sliced_accuracy(pred: torch.Tensor, labels: torch.Tensor, slices: dict) -> dict:
    """``{slice name: (accuracy, n)}`` for every boolean mask ``[N]`` in ``slices`` (``nan`` if empty)."""
    pred, labels = torch.as_tensor(pred), torch.as_tensor(labels)
    if pred.shape != labels.shape or pred.dim() != 1:
        raise ValueError(f"pred and labels must be [N] of one length, got {tuple(pred.shape)} and "
                         f"{tuple(labels.shape)}")
    out = {}
    for name, keep in slices.items():
        keep = torch.as_tensor(keep)
        if keep.dtype != torch.bool or keep.shape != pred.shape:
            raise ValueError(f"slices[{name!r}] must be a bool tensor shaped like pred, got {keep.dtype} "
                             f"{tuple(keep.shape)}")
        n = int(keep.sum())
        out[name] = ((pred[keep] == labels[keep]).float().mean().item() if n else float("nan"), n)
    return out


def artifact_audit(attr: torch.Tensor, masks: dict, names) -> dict:
    """For each mask name: ``(mean mass, mean area share, n)`` over the images whose mask is not empty.

    mass   share of the map's magnitude inside the mask (``helpers.metrics.mask_mass``)
    share  share of the image the mask covers: what a map that ignores the artifact would put there
    """
    check_finite(attr, "attr")
    out = {}
    for name in names:
        if name not in masks:
            raise ValueError(f"names: no mask {name!r}; masks are {sorted(masks)}")
        present = masks[name].flatten(1).any(1)
        n = int(present.sum())
        if n == 0:
            out[name] = (float("nan"), float("nan"), 0)
            continue
        mass = mask_mass(attr[present], masks[name][present])
        out[name] = (mass.mean().item(), mask_share(masks[name][present]).mean().item(), n)
    return out


class Spray(NamedTuple):
    """What ``spray`` finds: a cluster per map, the eigenvalues of the graph Laplacian (ascending;
    the gap after the k-th is the evidence for k clusters), the spectral embedding [N, k], k, and
    the margins that say round-off cannot change the answer: the k-nearest-neighbour graph's
    (``knn_margin``), the eigengap's (the chosen gap minus the next largest) and k-means' (``kmeans``)."""

    labels: torch.Tensor
    eigenvalues: torch.Tensor
    embedding: torch.Tensor
    n_clusters: int
    margins: dict


def spray_features(maps: torch.Tensor, size: int = 8) -> torch.Tensor:
    """SpRAy's preprocessing: each map ``[N, 1, H, W]`` (or ``[N, C, H, W]``, summed over channels)
    average-pooled to ``size`` x ``size`` and scaled to unit sum of magnitudes: ``[N, size * size]``,
    float64. Only where the map puts its mass counts, not how much it has. An all-zero map has no
    mass, so no shape to compare: it is refused (leave such maps out; they are a group of their own)."""
    if maps.dim() != 4:
        raise ValueError(f"maps must be [N, C, H, W], got shape {tuple(maps.shape)}")
    if maps.shape[-1] % size or maps.shape[-2] % size:
        raise ValueError(f"size must divide the maps' height and width {tuple(maps.shape[-2:])}, got {size}")
    check_finite(maps, "maps")
    m = F.adaptive_avg_pool2d(maps.detach().double().sum(1, keepdim=True).abs(), size).flatten(1)
    empty = (m.sum(1) == 0).nonzero()[:, 0].tolist()
    if empty:
        more = f" and {len(empty) - 10} more" if len(empty) > 10 else ""
        raise ValueError(f"maps {empty[:10]}{more} are all zero: a map without mass has no shape to compare; "
                         "leave them out (keep = maps.flatten(1).abs().sum(1) > 0) and count them as a group "
                         "of their own")
    return m / m.sum(1, keepdim=True)


def knn_affinity(features: torch.Tensor, n_neighbors: int = 10) -> torch.Tensor:
    """The symmetric k-nearest-neighbour graph ``[N, N]``: 1 where j is among i's ``n_neighbors``
    nearest (Euclidean, itself included) and i among j's, 0.5 where only one holds (scikit-learn's
    ``affinity="nearest_neighbors"``: (C + C^T) / 2), with no self-loops (the Laplacian ignores them).

    A warning where the graph is not determined by the maps alone: a map whose ``n_neighbors``-th
    and next nearest maps are at the same distance (identical maps) gets one or the other by the
    maps' order, and a cluster boundary there is the tie-breaking's (``knn_margin`` is then 0)."""
    n = features.shape[0]
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int) or not 2 <= n_neighbors < n:
        raise ValueError(f"n_neighbors must be in 2..{n - 1} for {n} maps, got {n_neighbors!r} (a map is its "
                         "own nearest neighbour, so with 1 no two maps would be joined)")
    d = torch.cdist(features, features)
    near = d.sort(1).values
    tied = (near[:, n_neighbors] == near[:, n_neighbors - 1]).nonzero()[:, 0].tolist()
    if tied:
        warnings.warn(f"for maps {tied[:10]} the {n_neighbors}-th and the next nearest map are at one distance "
                      "(identical maps?): the maps' order, not their shapes, picks their neighbours; leave out "
                      "duplicate maps, or change n_neighbors", UserWarning, stacklevel=3)
    idx = d.topk(n_neighbors, largest=False).indices
    c = torch.zeros(n, n, dtype=features.dtype, device=features.device).scatter_(1, idx, 1.0)
    return ((c + c.T) / 2).fill_diagonal_(0.0)


def knn_margin(features: torch.Tensor, n_neighbors: int = 10) -> float:
    """The smallest relative gap, over all maps, between the ``n_neighbors``-th and the next nearest
    distance: how far the graph is from a near-tie that round-off could flip."""
    d = torch.cdist(features, features).sort(1).values
    return ((d[:, n_neighbors] - d[:, n_neighbors - 1]) / d[:, n_neighbors].clamp_min(1e-300)).min().item()


def kmeans(points: torch.Tensor, k: int, iters: int = 100) -> tuple[torch.Tensor, float]:
    """Lloyd's k-means from a deterministic start: ``(labels [N], margin)``.

    The first centre is the point farthest from the mean, each next one the point farthest from the
    centres so far (farthest-point seeding: no random draw, so no draw that round-off could move).
    ``margin`` is the smallest relative gap, over the points, between the distance to their own
    centre and to the next nearest: a point within round-off of two centres would make it ~0.
    """
    if not isinstance(k, int) or not 1 <= k <= len(points):
        raise ValueError(f"k must be an int in 1..{len(points)}, got {k!r}")
    centres = points[(points - points.mean(0)).norm(dim=1).argmax()][None]
    for _ in range(1, k):
        centres = torch.cat([centres, points[torch.cdist(points, centres).min(1).values.argmax()][None]])
    for _ in range(iters):
        labels = torch.cdist(points, centres).argmin(1)
        new = torch.stack([points[labels == j].mean(0) if (labels == j).any() else centres[j] for j in range(k)])
        if torch.equal(new, centres):
            break
        centres = new
    d = torch.cdist(points, centres).sort(1).values
    margin = ((d[:, 1] - d[:, 0]) / d[:, 1].clamp_min(1e-300)).min().item() if k > 1 else 1.0
    return torch.cdist(points, centres).argmin(1), margin


def spray(maps: torch.Tensor, n_clusters: int | None = None, *, size: int = 8, n_neighbors: int = 10,
          max_clusters: int = 8) -> Spray:
    """Spectral Relevance Analysis (Lapuschkin et al. 2019) of attribution maps ``[N, C, H, W]``.

    1. ``spray_features``: pool each map to ``size`` x ``size``, scale to unit mass;
    2. ``knn_affinity``: the symmetric k-nearest-neighbour graph A, degrees D;
    3. the normalized Laplacian L = I - D^-1/2 A D^-1/2; its eigenvalues, ascending. A graph made of
       k loosely joined groups has k eigenvalues near 0, then a gap: with ``n_clusters=None``, k is
       the position of the largest gap among the first ``max_clusters`` (the eigengap heuristic);
    4. the k eigenvectors, scaled by D^-1/2 (scikit-learn's ``spectral_embedding``), clustered
       by ``kmeans``; clusters are numbered by size, largest first.

    No mask, label or artifact name enters: the groups come from the maps' shapes alone. Maps that
    cannot be told apart are refused rather than clustered: all-zero maps (no shape), and a set in
    which fewer than two maps differ. A tie in the k-nearest-neighbour graph (duplicate maps) gets
    a warning: the maps' order picks those neighbours, and ``margins["knn"]`` is 0.
    """
    feats = spray_features(maps, size)
    if len(torch.unique(feats, dim=0)) < 2:
        raise ValueError(f"the maps cannot be told apart: all {len(feats)} are the same shape, and any clustering "
                         "of them would be the tie-breaking's")
    a = knn_affinity(feats, n_neighbors)
    margins = {"knn": knn_margin(feats, n_neighbors)}
    d_isqrt = a.sum(1).rsqrt()
    lap = torch.eye(len(a), dtype=a.dtype, device=a.device) - d_isqrt[:, None] * a * d_isqrt[None, :]
    evals, evecs = torch.linalg.eigh(lap)
    if n_clusters is None:
        gaps = torch.diff(evals[:min(max_clusters, len(evals) - 1) + 1])
        gaps[0] = -1.0  # at least two clusters
        n_clusters = int(gaps.argmax()) + 1
        margins["eigengap"] = (gaps.max() - gaps.topk(2).values[1]).item()
    if not isinstance(n_clusters, int) or not 2 <= n_clusters < len(a):
        raise ValueError(f"n_clusters must be an int in 2..{len(a) - 1}, got {n_clusters!r}")
    emb = evecs[:, :n_clusters] * d_isqrt[:, None]
    cols = torch.arange(n_clusters, device=emb.device)
    emb = emb * torch.where(emb[emb.abs().argmax(0), cols] < 0, -1.0, 1.0)  # sign fixed
    labels, margins["kmeans"] = kmeans(emb, n_clusters)
    sizes = torch.bincount(labels, minlength=n_clusters)
    order = sorted(range(n_clusters), key=lambda j: (-int(sizes[j]), int((labels == j).nonzero()[0])))
    labels = torch.tensor([order.index(int(j)) for j in labels], device=emb.device)
    return Spray(labels, evals, emb, n_clusters, margins)


# ---- the cheat sheet (notebook 15's closing) ----
# One row per method: the question it answers, its known failure modes, and figures measured in
# the course, each quoted exactly as a notebook printed it (tests/test_playbook.py checks every
# quote against that notebook's committed outputs, so the sheet cannot drift from the course).
CHEAT_SHEET = [
    dict(method='saliency', notebook='01',
         question='which pixels would change the score fastest?',
         fails='noisy; a gradient, not a contribution; largely survives a random top layer',
         evidence=[
             ('12', 'saliency            0.8 [0.6, 0.9]',
              'rank correlation with its own map when fc is random: 0.8'),
         ]),
    dict(method='SmoothGrad', notebook='02',
         question='the same, averaged over noisy copies: less grain?',
         fails='the noise level is a free knob; on DermNet it paints the stride-2 grid',
         evidence=[
             ('13', 'SmoothGrad    0.34 [0.21, 0.48]',
              'deletion AUC 0.34 on the shortcut model (saliency: 0.18; lower is better)'),
         ]),
    dict(method='Integrated Gradients', notebook='03',
         question='how much did each pixel contribute, relative to a baseline?',
         fails='blind wherever x equals the baseline (black corners from a black baseline)',
         evidence=[
             ('12', 'IG                  0.8 [0.7, 0.9]',
              'rank correlation with its own map when fc is random: 0.8'),
         ]),
    dict(method='Grad-CAM', notebook='04',
         question='which region of the last feature map drove the class?',
         fails='coarse (8 x 8 on DermNet); thin artifacts fall between cells',
         evidence=[
             ('12', 'Grad-CAM         -0.4 [-0.5, -0.2]',
              'with fc random its map changes completely (-0.4): it passes'),
             ('13', 'recommended for a shortcut audit: Grad-CAM',
              "the evaluation leaderboard's pick for a shortcut audit"),
         ]),
    dict(method='guided backprop', notebook='04',
         question='(a sharp picture of edges, not an answer about the model)',
         fails='redraws the image: fails the randomization test',
         evidence=[
             ('12', 'guided backprop     0.9 [0.9, 0.9]',
              '0.9 with fc random: the map does not depend on the decision'),
         ]),
    dict(method='occlusion', notebook='05',
         question='what happens to the score when a patch is hidden?',
         fails="the patch's colour is part of the answer; window and stride set the resolution",
         evidence=[
             ('12', 'occlusion 0.5 | KernelSHAP 0.0',
              'with every layer random, rank correlation 0.5 with its own map'),
         ]),
    dict(method='LIME', notebook='06',
         question='which segments does a local linear model weigh?',
         fails='depends on the segmentation and the kernel width; varies with the seed',
         evidence=[
             ('06', '25                0.62           0.59',
              'with 25 samples, two seeds share 0.62 of their top-3 segments'),
         ]),
    dict(method='KernelSHAP', notebook='07',
         question="each segment's Shapley value for this prediction",
         fails='segments and the hidden-segment fill decide the answer; sampling noise',
         evidence=[
             ('12', 'occlusion 0.5 | KernelSHAP 0.0',
              'with every layer random, rank correlation 0.0: it passes'),
         ]),
    dict(method='TCAV', notebook='10',
         question='does a human concept push the class score, beyond chance?',
         fails='needs concept sets that show only the concept; leaks correlated concepts',
         evidence=[
             ('10', 'random-weights DermNet: 8 of 21 tests significant',
              'a network with random weights passes 8 of 21 concept tests'),
         ]),
    dict(method='attention rollout', notebook='11',
         question="where does a ViT's class token attend?",
         fails='attention is not evidence: compare with relevance or occlusion',
         evidence=[
             ('11', 'ViT shortcut                            0.53             0.31              0.40              0.09',
              "the ruler's causal share 0.53; Grad-CAM says 0.31, occlusion 0.09"),
         ]),
    dict(method='SAE latents', notebook='14',
         question='which features does the layer use, named afterwards?',
         fails='a latent is found, not assigned: its meaning must be checked by intervention',
         evidence=[
             ('14', 'shortcut, 40 ruler latents off           0.009  436',
              '40 ruler latents off: ruler flip rate 0.495 -> 0.009'),
         ]),
]


# ---- the self-check (notebook 15's closing) ----
# What a learner should now be able to do, each skill with the exercise that trains it and the
# checker that grades it (tests/test_playbook.py checks that each checker exists in
# helpers.exercises and that its notebook calls it).
SELF_CHECK = [
    dict(skill="measure where a map puts its mass (ruler, lesion)", notebook="00", checker="check_mask_mass"),
    dict(skill="slice accuracy to find an artifact that costs accuracy", notebook="00",
         checker="check_sliced_accuracy_question"),
    dict(skill="compute a saliency map within the method contract", notebook="01", checker="check_saliency"),
    dict(skill="tell a model's use of a region from its area share", notebook="01",
         checker="check_corners_question"),
    dict(skill="average gradients over noise (SmoothGrad)", notebook="02", checker="check_smoothgrad"),
    dict(skill="integrate gradients along a path, with completeness", notebook="03",
         checker="check_integrated_gradients"),
    dict(skill="say what a baseline hides from IG", notebook="03", checker="check_ig_corners_question"),
    dict(skill="weight feature maps into Grad-CAM", notebook="04", checker="check_grad_cam_weights"),
    dict(skill="occlude patches and read the drop", notebook="05", checker="check_occlusion"),
    dict(skill="weight LIME's samples by their distance", notebook="06", checker="check_lime_kernel"),
    dict(skill="compute Shapley values by their definition", notebook="07", checker="check_shapley"),
    dict(skill="find the channels that respond to an artifact", notebook="08",
         checker="check_ruler_channels_question"),
    dict(skill="run a transposed convolution by hand", notebook="09", checker="check_conv_transpose"),
    dict(skill="score a concept with TCAV", notebook="10", checker="check_tcav_score"),
    dict(skill="roll attention out through a ViT", notebook="11", checker="check_rollout"),
    dict(skill="randomize a model for a sanity check", notebook="12", checker="check_randomized"),
    dict(skill="score a map by deleting what it ranks first", notebook="13", checker="check_deletion_scores"),
    dict(skill="train a TopK sparse autoencoder", notebook="14", checker="check_topk_sae"),
    dict(skill="measure an artifact's flip rate (the causal test)", notebook="15", checker="check_flip_rate"),
    dict(skill="find an unknown shortcut and say what it stands for", notebook="15",
         checker="check_shortcut_question"),
]
