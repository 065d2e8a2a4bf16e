"""Notebook 15's playbook helpers: sliced accuracy, the artifact audit, SpRAy (against scipy and
scikit-learn), and the repairs' training pieces (RRR's penalty, the counterfactual set)."""

import numpy as np
import pytest
import scipy.sparse.csgraph as csgraph
import torch
from sklearn.cluster import SpectralClustering
from sklearn.manifold import spectral_embedding
from sklearn.metrics import adjusted_rand_score

from helpers.data import CLASSES, CLINIC_C, make_dataset
from helpers.models import DermNet
from helpers.playbook import artifact_audit, kmeans, knn_affinity, knn_margin, sliced_accuracy, spray, spray_features
from helpers.train import artifact_intervention, clinic_c_fix_set, intervention_pair, rrr_loss


def _three_shapes(n=90, noise=0.3, seed=0):
    """Maps of three shapes (a central blob, a ring, a corner spot) with noise; truth = index % 3."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    r = (xx ** 2 + yy ** 2).sqrt()
    protos = [torch.exp(-r ** 2 / 0.1), torch.exp(-(r - 0.7) ** 2 / 0.01),
              torch.exp(-((xx - 0.7) ** 2 + (yy - 0.7) ** 2) / 0.05)]
    maps = torch.stack([protos[i % 3] + noise * torch.rand(64, 64, generator=g) for i in range(n)])[:, None]
    return maps, np.arange(n) % 3


def test_spray_finds_the_three_shapes_and_their_number():
    maps, truth = _three_shapes()
    res = spray(maps)
    assert res.n_clusters == 3
    assert adjusted_rand_score(truth, res.labels.numpy()) == 1.0
    assert res.eigenvalues[3] - res.eigenvalues[2] > 0.3  # the eigengap that chose 3
    assert min(res.margins.values()) > 0
    assert torch.bincount(res.labels).tolist() == sorted(torch.bincount(res.labels).tolist(), reverse=True)


def test_spray_laplacian_and_embedding_match_scipy_and_sklearn():
    maps, _ = _three_shapes(noise=0.6, seed=1)
    res = spray(maps, n_clusters=3)
    a = knn_affinity(spray_features(maps)).numpy()
    evals = np.linalg.eigvalsh(csgraph.laplacian(a, normed=True))
    assert np.abs(evals - res.eigenvalues.numpy()).max() < 1e-10
    theirs = spectral_embedding(a, n_components=3, norm_laplacian=True, drop_first=False, random_state=0,
                                eigen_solver="arpack")
    q1, _ = np.linalg.qr(theirs)
    q2, _ = np.linalg.qr(res.embedding.numpy())
    assert np.linalg.svd(q1.T @ q2)[1].min() > 1 - 1e-8  # the same subspace
    sk = SpectralClustering(3, affinity="precomputed", random_state=0).fit(a)
    assert adjusted_rand_score(sk.labels_, res.labels.numpy()) == 1.0


def test_knn_affinity_is_sklearns_connectivity_graph():
    from sklearn.neighbors import kneighbors_graph
    maps, _ = _three_shapes(n=30)
    feats = spray_features(maps)
    c = kneighbors_graph(feats.numpy(), 5, include_self=True).toarray()
    theirs = 0.5 * (c + c.T)
    np.fill_diagonal(theirs, 0)
    assert np.array_equal(knn_affinity(feats, 5).numpy(), theirs)
    assert knn_margin(feats, 5) > 0


def test_kmeans_is_seeded_and_separates_blobs():
    g = torch.Generator().manual_seed(0)
    pts = torch.cat([torch.randn(20, 2, generator=g) * 0.1 + c for c in (0.0, 5.0)]).double()
    (a, margin), (b, _) = kmeans(pts, 2), kmeans(pts, 2)
    assert torch.equal(a, b) and margin > 0.5
    assert adjusted_rand_score(np.repeat([0, 1], 20), a.numpy()) == 1.0
    with pytest.raises(ValueError, match="k must"):
        kmeans(pts, 0)


@pytest.mark.parametrize("kwargs, word", [
    (dict(maps=torch.rand(10, 64, 64)), "maps"),
    (dict(maps=torch.rand(10, 1, 64, 64), size=7), "size"),
    (dict(maps=torch.rand(10, 1, 64, 64), n_neighbors=10), "n_neighbors"),
    (dict(maps=torch.rand(10, 1, 64, 64), n_neighbors=3, n_clusters=1), "n_clusters"),
])
def test_spray_bad_input_names_the_argument(kwargs, word):
    with pytest.raises(ValueError, match=word):
        spray(**kwargs)


def test_spray_refuses_maps_without_mass():
    """24 all-zero maps have no shape at all: a clustering of them would be the tie-breaking's."""
    maps, _ = _three_shapes(n=24)
    maps[[3, 17]] = 0.0
    with pytest.raises(ValueError, match=r"maps \[3, 17\] are all zero"):
        spray(maps, n_neighbors=5)
    with pytest.raises(ValueError, match=r"maps \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\] and 14 more are all zero"):
        spray(torch.zeros(24, 1, 64, 64))


def test_spray_refuses_maps_it_cannot_tell_apart():
    same = _three_shapes(n=1)[0].expand(24, 1, 64, 64)  # 24 copies of one map
    with pytest.raises(ValueError, match="cannot be told apart: all 24 are the same shape"):
        spray(same)
    with pytest.warns(UserWarning, match="at one distance"):
        knn_affinity(spray_features(same), 5)


def test_spray_warns_about_duplicates_and_still_clusters():
    """A map present three times has two neighbours at distance 0 besides itself: with
    n_neighbors=2 which one it keeps is the maps' order. A warning, not a refusal."""
    maps, truth = _three_shapes(n=30)
    maps = torch.cat([maps, maps[:1], maps[:1]])
    with pytest.warns(UserWarning, match=r"for maps \[0, 30, 31\] the 2-th and the next nearest map are at one"):
        result = spray(maps, n_neighbors=2)
    assert result.margins["knn"] == 0 and result.labels.shape == (32,)


def test_spray_with_one_neighbour_is_refused_clearly():
    """Each map is its own nearest neighbour: with n_neighbors=1 the graph has no edge at all."""
    maps, _ = _three_shapes(n=30)
    with pytest.raises(ValueError, match=r"n_neighbors must be in 2\.\.29 .* its own nearest neighbour"):
        spray(maps, n_neighbors=1)
    assert spray(maps, n_neighbors=2).labels.shape == (30,)


def test_spray_and_the_audit_refuse_non_finite_maps():
    maps, _ = _three_shapes(n=30)
    maps[4, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"maps holds 1 NaN or inf values \(in images \[4\]\)"):
        spray(maps, n_neighbors=5)
    ds = make_dataset(4, clinic="B", seed=3)
    with pytest.raises(ValueError, match="attr holds 1 NaN"):
        artifact_audit(maps[1:5], ds.masks, ["lesion"])


def test_spray_leaves_the_maps_alone():
    maps, _ = _three_shapes(n=30)
    before = maps.clone()
    spray(maps, n_neighbors=5)
    assert torch.equal(maps, before)


def test_sliced_accuracy_counts_each_slice():
    pred = torch.tensor([0, 1, 1, 2])
    labels = torch.tensor([0, 1, 2, 2])
    out = sliced_accuracy(pred, labels, {"all": torch.ones(4, dtype=torch.bool),
                                         "first two": torch.tensor([True, True, False, False]),
                                         "none": torch.zeros(4, dtype=torch.bool)})
    assert out["all"] == (0.75, 4) and out["first two"] == (1.0, 2)
    assert np.isnan(out["none"][0]) and out["none"][1] == 0
    with pytest.raises(ValueError, match="slices"):
        sliced_accuracy(pred, labels, {"bad": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="pred and labels"):
        sliced_accuracy(pred, labels[:3], {})


def test_artifact_audit_mass_and_share():
    ds = make_dataset(40, clinic="B", seed=3)
    uniform = torch.ones(40, 1, 64, 64)
    out = artifact_audit(uniform, ds.masks, ["ink", "lesion"])
    for mass, share, n in out.values():  # a flat map puts exactly the area share on each mask
        assert n > 0 and abs(mass - share) < 1e-6
    with pytest.raises(ValueError, match="names"):
        artifact_audit(uniform, ds.masks, ["tattoo"])


# ---- clinic C and its repairs ----

def test_clinic_c_ink_goes_with_its_class():
    ds = make_dataset(3000, clinic="C", seed=11)
    ink = ds.masks["ink"].flatten(1).any(1).float()
    marked = ds.labels == CLASSES.index(CLINIC_C["ink"][0])
    assert abs(ink[marked].mean() - CLINIC_C["ink"][1]) < 0.05
    assert abs(ink[~marked].mean() - CLINIC_C["ink"][2]) < 0.02
    ruler = ds.has_ruler[marked].float().mean(), ds.has_ruler[~marked].float().mean()
    assert abs(ruler[0] - ruler[1]) < 0.08  # rulers independent of the class, as in clinic B


def test_forcing_ink_changes_the_ink_and_nothing_else():
    off = make_dataset(50, clinic="C", seed=4, ink=False)
    on = make_dataset(50, clinic="C", seed=4, ink=True)
    assert not off.masks["ink"].any() and on.masks["ink"].flatten(1).any(1).all()
    changed = (off.images != on.images).any(1)
    near_ink = torch.nn.functional.max_pool2d(on.masks["ink"][:, None].float(), 5, 1, 2)[:, 0] > 0  # 2 px around
    assert changed.any() and not (changed & ~near_ink).any()
    assert torch.equal(off.labels, on.labels) and torch.equal(off.masks["lesion"], on.masks["lesion"])
    some = torch.arange(50) % 2 == 0
    mixed = make_dataset(50, clinic="C", seed=4, ink=some)
    assert torch.equal(mixed.images[some], on.images[some]) and torch.equal(mixed.images[~some], off.images[~some])
    with pytest.raises(ValueError, match="ink"):
        make_dataset(50, clinic="C", seed=4, ink=some[:10])
    with pytest.raises(ValueError, match="ink"):
        make_dataset(5, ink="yes")


def test_counterfactual_set_makes_ink_independent_of_the_class():
    images, labels, ink = clinic_c_fix_set(2000, seed=5, augment=True)
    present = ink.flatten(1).any(1).float()
    marked = labels == CLASSES.index(CLINIC_C["ink"][0])
    assert abs(present[marked].mean() - 0.5) < 0.08 and abs(present[~marked].mean() - 0.5) < 0.05
    _, _, ink_plain = clinic_c_fix_set(2000, seed=5, augment=False)
    assert ink_plain.flatten(1).any(1)[marked].float().mean() > 0.8


def test_rrr_loss_is_cross_entropy_plus_the_masked_gradient_penalty():
    torch.manual_seed(0)
    model = DermNet().eval()
    ds = make_dataset(4, clinic="C", seed=2, ink=True)
    x, y, mask = ds.images, ds.labels, ds.masks["ink"]
    loss0 = rrr_loss(model, x, y, mask, lam=0.0)
    assert torch.allclose(loss0, torch.nn.functional.cross_entropy(model(x), y))
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(torch.log_softmax(model(xg), 1).sum(), xg)
    penalty = (g * mask[:, None]).pow(2).sum() / 4
    assert torch.allclose(rrr_loss(model, x, y, mask, lam=2.0), loss0 + 2.0 * penalty, rtol=1e-5)
    assert torch.allclose(rrr_loss(model, x, y, torch.zeros_like(mask), lam=5.0), loss0)
    rrr_loss(model, x, y, mask).backward()  # the penalty is differentiable in the weights
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0


def test_artifact_intervention_for_ink():
    torch.manual_seed(0)
    model = DermNet().eval()
    pair = intervention_pair(64, seed=3, clinic="B", artifact="ink")
    out = artifact_intervention(model, "ink", "bcc", pair=pair)
    assert set(out) >= {"add", "remove", "add_n", "remove_n", "add_by_class"}
    assert "bcc" not in out["add_by_class"]
    with pytest.raises(ValueError, match="artifact"):
        intervention_pair(4, artifact="hair")


def test_cheat_sheet_quotes_what_the_notebooks_print():
    import json
    from pathlib import Path

    from helpers.playbook import CHEAT_SHEET

    root = Path(__file__).resolve().parent.parent / "notebooks"
    for row in CHEAT_SHEET:
        assert (root.glob(f"{row['notebook']}_*.ipynb")), row["method"]
        for nb, quote, gloss in row["evidence"]:
            (path,) = root.glob(f"{nb}_*.ipynb")
            cells = json.loads(path.read_text())["cells"]
            printed = "".join("".join(o.get("text", "")) for c in cells if c["cell_type"] == "code"
                              for o in c.get("outputs", []))
            assert quote in printed, f"{row['method']}: {path.name} no longer prints {quote!r}"
            assert gloss


def test_self_check_names_real_checkers_that_their_notebooks_call():
    from pathlib import Path

    from helpers import exercises
    from helpers.playbook import SELF_CHECK

    root = Path(__file__).resolve().parent.parent / "notebooks"
    for item in SELF_CHECK:
        assert callable(getattr(exercises, item["checker"], None)), item["checker"]
        (path,) = (root / "py").glob(f"{item['notebook']}_*.py")
        assert f"{item['checker']}(" in path.read_text(), f"{path.name} does not call {item['checker']}"
