"""helpers.sae: the two SAEs, their losses against dictionary-learning, training, metrics, the
SAE inside the model (splice, ablate_latents) and the shipped SAEs."""

import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

from helpers import sae as S
from helpers.data import make_dataset
from helpers.hooks import count_hooks
from helpers.models import load_dermnet

ROOT = Path(__file__).resolve().parent.parent


def _acts(n=512, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * 2 + 0.3


def _randomized(sae, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(sae.d_latent, generator=g))
        sae.b_dec.copy_(torch.randn(sae.d_in, generator=g))
    return sae


def test_shapes_and_unit_norm_decoder():
    for sae in (S.TopKSAE(32, 128, 4), S.ReLUSAE(32, 128)):
        x = _acts()
        f = sae.encode(x)
        assert f.shape == (512, 128) and (f >= 0).all()
        assert sae.decode(f).shape == (512, 32)
        assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(128), atol=1e-6)
    topk = S.TopKSAE(32, 128, 4)
    assert ((topk.encode(_acts()) > 0).sum(1) <= 4).all()
    # Gao et al.: the encoder starts as the decoder's transpose
    assert torch.equal(topk.W_enc, topk.W_dec.t())


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="k .* cannot be larger than the dictionary"):
        S.TopKSAE(32, 64, 65)
    with pytest.raises(ValueError, match="k must be an int"):
        S.TopKSAE(32, 64, 0)
    with pytest.raises(ValueError, match="l1 .* must be a number >= 0"):
        S.ReLUSAE(32, 64, l1=-0.1)
    with pytest.raises(ValueError, match="d_latent must be an int"):
        S.ReLUSAE(32, 0)
    sae = S.TopKSAE(32, 64, 4)
    with pytest.raises(ValueError, match=r"acts must be \[N, 32\]"):
        sae.encode(torch.randn(10, 31))
    with pytest.raises(ValueError, match="a feature map"):
        sae.encode(torch.randn(2, 32, 8, 8))
    with pytest.raises(ValueError, match=r"latents must be \[N, 64\]"):
        sae.decode(torch.randn(10, 32))
    with pytest.raises(TypeError, match="floating-point"):
        sae.encode(torch.ones(3, 32, dtype=torch.long))
    with pytest.raises(ValueError, match="scale must be a positive"):
        S.normalize(_acts(), -1.0)
    with pytest.raises(TypeError, match="sae must be"):
        S.train_sae(torch.nn.Linear(3, 3), _acts())
    with pytest.raises(ValueError, match="layer: this SAE does not know"):
        S.splice(torch.nn.Linear(3, 3), sae).__enter__()


def test_normalization_brings_the_mean_norm_to_sqrt_d():
    x = _acts(d=64) * 7
    scale = S.norm_scale(x)
    assert float(S.normalize(x, scale).norm(dim=1).mean()) == pytest.approx(8.0, rel=1e-5)


def _reference():
    # a pinned reference (requirements-nodeps.txt): missing, the test fails rather than skips
    return S._import_dictionary_learning()


def test_reference_library_is_the_pinned_version():
    pin = (ROOT / "requirements-nodeps.txt").read_text().split("dictionary-learning==")[1].split()[0]
    assert version("dictionary-learning") == pin


def test_topk_matches_dictionary_learning_exactly():
    _reference()
    sae = _randomized(S.TopKSAE(32, 128, 6, seed=3))
    trainer = S.reference_trainer(sae)
    x = _acts()
    with torch.no_grad():
        assert torch.equal(trainer.ae.encode(x), sae.encode(x))
        f = sae.encode(x)
        assert torch.equal(trainer.ae.decode(f), sae.decode(f))
        dead = ~(f > 0).any(0)  # never fired on this batch: dead for both
        assert 0 < int(dead.sum()) < 128
        trainer.num_tokens_since_fired[dead] = trainer.dead_feature_threshold
        theirs = trainer.loss(x, step=0, logging=True).losses
        ours = sae.loss(x, dead)
    assert float(ours["mse"]) == pytest.approx(theirs["l2_loss"], rel=1e-6)
    assert float(ours["aux"]) == pytest.approx(theirs["auxk_loss"], rel=1e-6)
    assert float(ours["loss"]) == pytest.approx(theirs["loss"], rel=1e-6)
    assert "nnsight" not in sys.modules or sys.modules["nnsight"].__spec__ is not None  # the stand-in is gone


def test_relu_matches_dictionary_learning_exactly():
    _reference()
    sae = _randomized(S.ReLUSAE(32, 128, l1=0.3, seed=4))
    trainer = S.reference_trainer(sae)
    x = _acts()
    with torch.no_grad():
        assert torch.equal(trainer.ae.encode(x), sae.encode(x))
        theirs = trainer.loss(x, step=0, logging=True).losses
        ours = sae.loss(x)
    assert float(ours["mse"]) == pytest.approx(theirs["mse_loss"], rel=1e-6)
    assert float(ours["l1"]) == pytest.approx(theirs["sparsity_loss"], rel=1e-6)
    assert float(ours["loss"]) == pytest.approx(theirs["loss"], rel=1e-6)


def test_aux_loss_is_zero_without_dead_latents_and_reaches_them():
    sae = S.TopKSAE(32, 128, 4)
    x = _acts()
    assert float(sae.loss(x, torch.zeros(128, dtype=torch.bool))["aux"]) == 0.0
    dead = torch.zeros(128, dtype=torch.bool)
    dead[:10] = True
    sae.loss(x, dead)["loss"].backward()
    assert sae.W_enc.grad[:, :10].abs().sum() > 0  # without AuxK a dead latent gets no gradient


def test_training_is_deterministic_and_reconstructs():
    x = _acts(2048, 16)
    runs = []
    for _ in range(2):
        sae = S.TopKSAE(16, 64, 4, seed=0)
        hist = S.train_sae(sae, x, steps=60, batch_size=256, lr=3e-3, seed=5, progress=False)
        runs.append(sae.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert hist["mse"][-1] < 0.7 * hist["mse"][0]
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(64), atol=1e-5)
    assert not sae.training
    assert all(p.grad is None for p in sae.parameters())  # no gradients left behind


def test_relu_training_resamples_dead_latents():
    x = _acts(2048, 16)
    sae = S.ReLUSAE(16, 64, l1=0.05, seed=0)
    with torch.no_grad():
        sae.b_enc[:8] = -1e3  # these can never fire
    S.train_sae(sae, x, steps=40, batch_size=256, seed=0, dead_after=1024, resample_every=10, progress=False)
    assert (sae.b_enc[:8] > -1e3).all()  # resampled: bias reset to 0, then trained


def test_evaluate_metrics():
    x = _acts(1024, 16)
    sae = S.TopKSAE(16, 64, 4)
    m = S.evaluate(sae, x)
    assert m["l0"] <= 4 and m["fve"] == pytest.approx(1 - m["nmse"])
    f = sae.encode(x)
    assert m["dead"] == pytest.approx(float((~(f > 0).any(0)).float().mean()))


def test_latent_auroc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(0)
    codes = torch.relu(torch.randn(300, 5, generator=g))  # many ties at 0
    pos = torch.rand(300, generator=g) < 0.3
    codes[:, 0] += pos.float()
    ours = S.latent_auroc(codes, pos)
    for j in range(5):
        assert float(ours[j]) == pytest.approx(roc_auc_score(pos.numpy(), codes[:, j].numpy()), abs=1e-6)
    with pytest.raises(ValueError, match="both positive and negative"):
        S.latent_auroc(codes, torch.zeros(300, dtype=torch.bool))


@pytest.fixture(scope="module")
def small_setup():
    model = load_dermnet("shortcut")
    ds = make_dataset(16, clinic="B", seed=S.SEED_BASE["eval"])
    acts = S.layer_vectors(model, ds.images)
    sae = S.TopKSAE(128, 256, 8, seed=0)
    sae.act_scale.fill_(S.norm_scale(acts))
    S.train_sae(sae, S.normalize(acts, float(sae.act_scale)), steps=30, batch_size=256, progress=False,
                layer="layer4")
    return model, ds, sae


def test_layer_vectors_order(small_setup):
    model, ds, _ = small_setup
    v = S.layer_vectors(model, ds.images[:2])
    with torch.no_grad():
        fmap = model.features(ds.images[:2])
    assert v.shape == (128, 128)
    assert torch.allclose(v.view(2, 8, 8, 128).permute(0, 3, 1, 2), fmap, atol=1e-5)


def test_ablate_nothing_changes_nothing_and_leaves_no_hook(small_setup):
    model, ds, sae = small_setup
    x = ds.images.clone()
    with torch.no_grad():
        before = model(x)
        with S.ablate_latents(model, sae, []):
            same = model(x)
        with S.ablate_latents(model, sae, [0, 5, 7]):
            edited = model(x)
    assert torch.allclose(same, before, atol=1e-4)
    assert not torch.allclose(edited, before, atol=1e-4)  # an edit that does something
    assert count_hooks(model) == 0 and torch.equal(x, ds.images) and not model.training


def test_ablate_subtracts_exactly_the_latents_contribution(small_setup):
    model, ds, sae = small_setup
    acts = S.normalize(S.layer_vectors(model, ds.images[:2]), float(sae.act_scale))
    f = sae.encode(acts)
    latent = int(f.sum(0).argmax())
    want = (acts - f[:, latent:latent + 1] * sae.W_dec[latent]) / sae.act_scale
    got = []
    with S.ablate_latents(model, sae, [latent]), torch.no_grad():
        h = model.layer4.register_forward_hook(lambda m, i, o: got.append(o.detach().clone()))
        try:
            model(ds.images[:2])
        finally:
            h.remove()
    assert torch.allclose(S._to_vectors(got[0]), want.detach(), atol=1e-4)
    assert count_hooks(model) == 0


def test_hooks_removed_on_exception_and_bad_latents(small_setup):
    model, ds, sae = small_setup
    with pytest.raises(RuntimeError, match="boom"):
        with S.ablate_latents(model, sae, [1]):
            raise RuntimeError("boom")
    assert count_hooks(model) == 0
    with pytest.raises(ValueError, match="latents must be indices"):
        S.ablate_latents(model, sae, [256])
    wrong = S.TopKSAE(64, 128, 4)
    wrong.layer = "layer4"
    with pytest.raises(ValueError, match="the SAE reads 64 channels"), torch.no_grad():
        with S.ablate_latents(model, wrong, [1]):
            model(ds.images[:1])
    assert count_hooks(model) == 0


def test_downstream_reports_accuracy_and_kl(small_setup):
    model, ds, sae = small_setup
    d = S.downstream(model, sae, ds.images, ds.labels)
    assert 0 <= d["accuracy"] <= 1 and d["kl"] >= 0
    assert count_hooks(model) == 0


def test_shipped_saes_load_verified_and_small():
    for name in ("shortcut", "debiased"):
        sae, layer = S.load_sae(name)
        assert isinstance(sae, S.TopKSAE) and layer == sae.layer == "layer4" and not sae.training
        assert S.sae_path(name).stat().st_size <= 5e6
        assert float(sae.act_scale) > 0
    with pytest.raises(ValueError, match="name must be"):
        S.load_sae("other")


def test_tampered_sae_is_refused(data_copy):
    path = S.sae_path("shortcut")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte changed
    path.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="does not match"):
        S.load_sae("shortcut")


# ---- the notebook's exercise checkers ----

def _solution(acts, W_enc, b_enc, W_dec, b_dec, k):
    pre = torch.relu((acts - b_dec) @ W_enc + b_enc)
    top = pre.topk(k, dim=-1)
    f = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    recon = f @ W_dec + b_dec
    return f, recon, (acts - recon).pow(2).sum(-1).mean()


def test_check_topk_sae_passes_the_solution_and_names_slips():
    from helpers.exercises import check_topk_sae

    assert check_topk_sae(_solution).passed

    def no_bias(acts, W_enc, b_enc, W_dec, b_dec, k):
        return _solution(acts + b_dec, W_enc, b_enc, W_dec, b_dec, k)[:1] + _solution(acts, W_enc, b_enc, W_dec,
                                                                                         b_dec, k)[1:]

    def all_kept(acts, W_enc, b_enc, W_dec, b_dec, k):
        f, recon, mse = _solution(acts, W_enc, b_enc, W_dec, b_dec, k)
        return torch.relu((acts - b_dec) @ W_enc + b_enc), recon, mse

    def mean_everywhere(acts, W_enc, b_enc, W_dec, b_dec, k):
        f, recon, _ = _solution(acts, W_enc, b_enc, W_dec, b_dec, k)
        return f, recon, (acts - recon).pow(2).mean()

    def scaffold(*args):
        raise NotImplementedError

    assert "pre-encoder bias" in check_topk_sae(no_bias).message
    assert "keep only the k largest" in check_topk_sae(all_kept).message
    assert "mean over every entry" in check_topk_sae(mean_everywhere).message
    todo = check_topk_sae(scaffold)
    assert not todo.passed and not todo.done and str(todo).startswith("TODO")


def test_check_artifact_latent_question_from_the_data():
    from helpers.exercises import check_artifact_latent_question

    sae, layer = S.load_sae("shortcut")
    ds = make_dataset(300, clinic="B", seed=S.SEED_BASE["eval"] + 7)
    codes = S.latent_codes(sae, S.normalize(S.layer_vectors(load_dermnet("shortcut"), ds.images, layer),
                                            float(sae.act_scale)))
    corners = S.latent_auroc(codes, S.cell_share(ds.masks["corners"]) >= 0.1)
    hair = S.latent_auroc(codes, S.cell_share(ds.masks["hair"]) >= 0.1)
    truth = bool(hair.max() >= 0.9)
    best, worst = int(corners.argmax()), int(corners.argmin())
    assert check_artifact_latent_question(best, truth).passed
    assert "corners_latent" in check_artifact_latent_question(worst, truth).message
    assert "hair_latent_exists" in check_artifact_latent_question(best, not truth).message
    assert "must be True or False" in check_artifact_latent_question(best, 1).message


def test_batch_topk_matches_dictionary_learning_and_keeps_k_per_vector_on_average():
    _reference()
    sae = _randomized(S.BatchTopKSAE(32, 128, 6, seed=5)).train()
    trainer = S.reference_trainer(sae)
    x = _acts()
    with torch.no_grad():
        f = sae.encode(x)
        assert torch.equal(trainer.ae.encode(x, use_threshold=False), f)
        assert int((f > 0).sum()) <= 6 * len(x) and ((f > 0).sum(1) != 6).any()  # varies per vector
        dead = ~(f > 0).any(0)
        assert int(dead.sum()) > 0
        trainer.num_tokens_since_fired[dead] = trainer.dead_feature_threshold
        theirs = trainer.loss(x, step=0, logging=True).losses
        ours = sae.loss(x, dead)
    assert float(ours["mse"]) == pytest.approx(theirs["l2_loss"], rel=1e-6)
    assert float(ours["aux"]) == pytest.approx(theirs["auxk_loss"], rel=1e-6)
    assert float(sae.threshold) == float(f[f > 0].min())  # the first step sets the threshold
    sae.eval()
    trainer = S.reference_trainer(sae)
    with torch.no_grad():
        assert torch.equal(trainer.ae.encode(x, use_threshold=True), sae.encode(x))
        assert ((sae.encode(x) == 0) | (sae.encode(x) > sae.threshold)).all()


def test_batch_topk_trains():
    x = _acts(2048, 16)
    sae = S.BatchTopKSAE(16, 64, 4, seed=0)
    hist = S.train_sae(sae, x, steps=60, batch_size=256, lr=3e-3, seed=5, progress=False)
    assert hist["mse"][-1] < 0.7 * hist["mse"][0] and float(sae.threshold) > 0 and not sae.training


# ---- float64 activations, layers named in one line, non-finite input ----

@pytest.mark.parametrize("kind", [S.TopKSAE, S.ReLUSAE])
def test_train_sae_follows_float64_activations(kind):
    x = _acts(1024, 16).double()
    sae = kind(16, 64, 4, seed=0) if kind is S.TopKSAE else kind(16, 64, l1=0.05, seed=0)
    hist = S.train_sae(sae, x, steps=30, batch_size=256, lr=3e-3, seed=5, dead_after=512, resample_every=10,
                       progress=False)
    assert all(p.dtype == torch.float64 for p in sae.parameters()) and sae.encode(x).dtype == torch.float64
    assert hist["mse"][-1] < hist["mse"][0]
    assert S.evaluate(sae, x)["fve"] > 0
    with pytest.raises(TypeError, match="acts are torch.float32 but the SAE's parameters are torch.float64"):
        sae.encode(x.float())


def test_an_sae_on_a_float64_torchvision_resnet():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).double().eval()
    acts = S.layer_vectors(model, torch.rand(4, 3, 64, 64, dtype=torch.float64), "layer3")
    assert acts.shape == (4 * 4 * 4, 256) and acts.dtype == torch.float64
    sae = S.TopKSAE(256, 512, 8)
    S.train_sae(sae, S.normalize(acts, S.norm_scale(acts)), steps=3, batch_size=32, progress=False)
    assert sae.W_enc.dtype == torch.float64 and count_hooks(model) == 0


def test_a_layer_given_as_a_module_is_named_in_one_line(small_setup):
    model, ds, sae = small_setup
    with pytest.raises(ValueError, match="layer 'layer3' outputs") as err, torch.no_grad():
        with S.splice(model, sae, layer=model.layer3):
            model(ds.images[:1])
    assert "\n" not in str(err.value) and count_hooks(model) == 0


def test_downstream_refuses_non_finite_images_and_scores(small_setup):
    import copy

    model, ds, sae = small_setup
    bad = ds.images[:2].clone()
    bad[1, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match=r"images holds 1 NaN or inf values \(in images \[1\]\)"):
        S.downstream(model, sae, bad, ds.labels[:2])
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.fc.bias[0] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf scores"):
        S.downstream(broken, sae, ds.images[:2], ds.labels[:2])
    assert count_hooks(model) == 0 and count_hooks(broken) == 0


def test_a_vit_token_layer_gives_one_vector_per_token_and_edits_in_place():
    """A ViT block outputs tokens [B, T, C]: one vector per token, and splice / ablate_latents put
    the edited tokens back where they were (before, layer_vectors refused anything but a map)."""
    import timm

    from helpers.hooks import capture

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=3).eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    acts = S.layer_vectors(vit, x, "blocks.0")
    with capture(vit, "blocks.0") as rec, torch.no_grad():
        clean = vit(x)
    assert acts.shape == (2 * 5, 192) and torch.equal(acts.view(2, 5, 192), rec.activation)
    sae = S.TopKSAE(192, 32, k=4)
    S.train_sae(sae, acts, steps=3, batch_size=8, progress=False)
    with torch.no_grad(), S.ablate_latents(vit, sae, [], layer="blocks.0"):
        same = vit(x)
    assert torch.allclose(same, clean, atol=1e-5)  # no latent removed: only round-off
    codes = sae.encode(S.normalize(acts, float(sae.act_scale)))
    top = int(codes.abs().sum(0).argmax())
    with torch.no_grad(), S.ablate_latents(vit, sae, [top], layer="blocks.0"):
        edited = vit(x)
    assert not torch.allclose(edited, clean, atol=1e-5)
    probe = S.LatentProbe(vit, sae, "blocks.0")
    with capture(probe, "latents") as rec, torch.no_grad():
        probe(x)
    assert torch.equal(rec.activation, codes.view(2, 5, 32))  # latent tokens [B, T, d_latent]
    assert count_hooks(vit) == 0
