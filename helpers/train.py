"""Train and audit the course's models. ``python -m helpers.train`` (or ``make data``) rebuilds the
checkpoints: DermNet (a small ResNet) and DermViT (a small timm Vision Transformer), each twice.

For each architecture, two models, same recipe, different data:

- ``shortcut``: trained on clinic A, where a ruler appears in most melanoma images and in few
  others. It scores very well on clinic A, partly by looking at the ruler.
- ``debiased``: trained on clinic B, where rulers appear at one rate whatever the class, so the
  ruler carries no label information.

Each epoch draws fresh DermSynth images from seeds reserved for training; every evaluation uses
seeds from a disjoint range (``TEST_SEEDS``), so the test images are never seen in training.

Notebook 15's case adds three DermNets: ``clinic_c``, trained like the others on clinic C (its own
shortcut, found in the notebook), and two repairs fine-tuned from it, ``clinic_c_augmented``
(counterfactual augmentation) and ``clinic_c_rrr`` (Right for the Right Reasons).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .batching import check_batch_size, run_batches, workload
from .data import CLASSES, CLINIC_C, MEL, make_dataset
from .models import ARCHITECTURES, DATA_DIR, MANIFEST, DermNet, checkpoint_path, sha256

TRAIN_CLINIC = {"shortcut": "A", "debiased": "B"}
RECIPE = dict(epochs=6, n_per_epoch=8000, batch_size=128, lr=3e-3, weight_decay=5e-4)
TRAIN_SEED_BASE = {"shortcut": 10_000, "debiased": 20_000}  # epoch e uses base + e
# the ViT gets DermNet's recipe. Measured (shortcut ViT, flips when a ruler is added): 10 epochs at
# lr 1e-3 with decay 0.05, a transformer's usual setting, learned the shortcut less (0.17 against 0.19)
VIT_RECIPE = dict(RECIPE)
VIT_SEED_BASE = {"shortcut": 30_000, "debiased": 40_000}
# the data-randomization control (Adebayo et al. 2018): DermNet on a fixed set of clinic-A images
# whose labels are permuted, trained until it has memorized them (no weight decay: nothing but
# memorization can lower its loss)
RANDOM_LABELS_RECIPE = dict(n_train=1024, epochs=50, batch_size=128, lr=3e-3, weight_decay=0.0,
                            image_seed=50_000, permutation_seed=1, init_seed=50_001)
# notebook 15: clinic C's model, trained like the others, and two repairs fine-tuned from it on
# clinic-C images. "augmented": each image drawn with its ink marking forced on or off at random
# (a fair coin), so the marking carries no label information; "rrr": the images as clinic C draws
# them, with Ross et al.'s penalty on the input gradient inside the ink mask (rrr_loss)
CLINIC_C_SEED_BASE = 60_000
FIX_RECIPE = dict(epochs=2, n_per_epoch=8000, batch_size=128, lr=1e-3, weight_decay=5e-4)
FIX_SEED_BASE = {"augmented": 61_000, "rrr": 61_000}  # the same images (before augmentation) for both
RRR_LAMBDA = 10.0
TEST_SEEDS = {"A": 900_001, "B": 900_002, "intervention": 900_003, "C": 900_004}
N_TEST = 2000


def train_dermnet(clinic: str, *, epochs: int, n_per_epoch: int, batch_size: int, lr: float,
                  weight_decay: float, seed_base: int, progress: bool = True, arch: str = "dermnet"):
    """Train a fresh DermNet (or, with ``arch="vit"``, a DermViT) on DermSynth images of ``clinic``
    (AdamW, one-cycle schedule)."""
    torch.manual_seed(seed_base)
    if arch == "vit":
        from .vit import DermViT
        model = DermViT()
    else:
        model = DermNet()

    def epoch_data(epoch):
        ds = make_dataset(n_per_epoch, clinic=clinic, seed=seed_base + epoch)
        return ds.images, ds.labels

    return _fit(model, epoch_data, n_per_epoch, epochs=epochs, batch_size=batch_size, lr=lr,
                weight_decay=weight_decay, desc=f"{arch} clinic {clinic}", progress=progress)


def _fit(model, epoch_data, n: int, *, epochs: int, batch_size: int, lr: float, weight_decay: float,
         desc: str, progress: bool, loss_fn=None):
    """The course's training loop: AdamW with a one-cycle schedule; ``epoch_data(epoch)`` gives that
    epoch's ``(images, labels, *extra)`` (n of each), visited in a fresh random order. ``loss_fn(model,
    images, labels, *extra)`` is the batch loss (cross-entropy when None)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = n // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                pct_start=0.2)
    bar = tqdm(total=epochs * steps_per_epoch, desc=desc, disable=not progress)
    model.train()
    for epoch in range(epochs):
        images, labels, *extra = epoch_data(epoch)
        order = torch.randperm(n)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size:(i + 1) * batch_size]
            if loss_fn is None:
                loss = F.cross_entropy(model(images[idx]), labels[idx])
            else:
                loss = loss_fn(model, images[idx], labels[idx], *(e[idx] for e in extra))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
    bar.close()
    return model.eval()


def rrr_loss(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
             lam: float = RRR_LAMBDA) -> torch.Tensor:
    """Right for the Right Reasons (Ross, Hughes & Doshi-Velez 2017, arXiv:1703.03717):

        loss = cross-entropy + lam * mean over images of sum_pixels (mask * d sum_k log p_k / dx)^2

    ``mask`` [B, H, W] is 1 where the model must not look (here, the ink marking); the input gradient
    of the summed log-probabilities is taken with ``create_graph=True`` so that the penalty itself is
    trained (a second backward pass through the network).
    """
    x = images.detach().requires_grad_(True)
    out = model(x)
    (grad,) = torch.autograd.grad(F.log_softmax(out, 1).sum(), x, create_graph=True)
    penalty = (grad * mask[:, None].to(grad.dtype)).pow(2).sum((1, 2, 3)).mean()
    return F.cross_entropy(out, labels) + lam * penalty


def clinic_c_fix_set(n: int, seed: int, augment: bool) -> tuple:
    """One epoch of clinic-C images for a repair: ``(images, labels, ink masks)``. ``augment``: each
    image's ink forced on or off by a fair coin (seeded), the counterfactual augmentation."""
    ink = None
    if augment:
        ink = torch.rand(n, generator=torch.Generator().manual_seed(seed + 500)) < 0.5
    ds = make_dataset(n, clinic="C", seed=seed, ink=ink)
    return ds.images, ds.labels, ds.masks["ink"]


def train_fix(kind: str, base: torch.nn.Module, *, epochs: int, n_per_epoch: int, batch_size: int, lr: float,
              weight_decay: float, lam: float = RRR_LAMBDA, progress: bool = True) -> torch.nn.Module:
    """Fine-tune a copy of ``base`` (clinic C's model) for ``epochs`` on clinic-C images, repaired by
    ``kind``: "augmented" (counterfactual augmentation) or "rrr" (``rrr_loss`` inside the ink mask)."""
    import copy
    if kind not in FIX_SEED_BASE:
        raise ValueError(f"kind must be one of {sorted(FIX_SEED_BASE)}, got {kind!r}")
    model = copy.deepcopy(base)
    torch.manual_seed(FIX_SEED_BASE[kind])
    seed_base = FIX_SEED_BASE[kind]
    loss_fn = (lambda m, x, y, mask: rrr_loss(m, x, y, mask, lam)) if kind == "rrr" else None
    return _fit(model, lambda epoch: clinic_c_fix_set(n_per_epoch, seed_base + epoch, kind == "augmented"),
                n_per_epoch, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                desc=f"dermnet clinic C, {kind}", progress=progress, loss_fn=loss_fn)


def random_label_set(n_train: int, image_seed: int, permutation_seed: int, **_):
    """The random-label model's training set: ``(images, true labels, permuted labels)``."""
    ds = make_dataset(n_train, clinic="A", seed=image_seed)
    g = torch.Generator().manual_seed(permutation_seed)
    return ds.images, ds.labels, ds.labels[torch.randperm(n_train, generator=g)]


def train_random_labels(*, n_train: int, epochs: int, batch_size: int, lr: float, weight_decay: float,
                        image_seed: int, permutation_seed: int, init_seed: int, progress: bool = True):
    """A fresh DermNet trained for ``epochs`` passes over one fixed set of ``n_train`` clinic-A
    images with permuted labels (AdamW, one-cycle), the data-randomization test's model."""
    images, _, labels = random_label_set(n_train, image_seed, permutation_seed)
    images = images.contiguous(memory_format=torch.channels_last)
    torch.manual_seed(init_seed)
    return _fit(DermNet(), lambda epoch: (images, labels), n_train, epochs=epochs, batch_size=batch_size,
                lr=lr, weight_decay=weight_decay, desc="dermnet random labels", progress=progress)


def audit_random_labels(model: torch.nn.Module, recipe: dict = RANDOM_LABELS_RECIPE) -> dict:
    """Memorized, and at chance elsewhere: accuracy on its own (permuted) training labels, on the
    true labels of those images, and on held-out images of both clinics."""
    images, true, permuted = random_label_set(**recipe)
    pred = predict(model, images)
    return {"train_accuracy_permuted_labels": (pred == permuted).float().mean().item(),
            "train_accuracy_true_labels": (pred == true).float().mean().item(),
            "accuracy_A": accuracy(model, "A"), "accuracy_B": accuracy(model, "B")}


@torch.no_grad()
def logits(model: torch.nn.Module, images: torch.Tensor, batch_size="auto") -> torch.Tensor:
    """The model's scores [N, K], in batches, in eval mode, without changing the model's mode.

    The batches are passed in channels-last layout, which the CPU convolutions run about 1.8x
    faster on; the model itself is not touched.
    """
    check_batch_size(batch_size)
    out = []

    def step(lo, hi):
        out.append(model(images[lo:hi].contiguous(memory_format=torch.channels_last)))

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            run_batches(step, len(images), batch_size, workload("forward", model, images), images.device)
        return torch.cat(out)
    finally:
        model.train(was_training)


def predict(model: torch.nn.Module, images: torch.Tensor, batch_size="auto") -> torch.Tensor:
    """Predicted class per image (the argmax of ``logits``), without changing the model's mode."""
    return logits(model, images, batch_size).argmax(1)


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, k: int = len(CLASSES)) -> torch.Tensor:
    """Counts [true class, predicted class]."""
    return torch.bincount(labels * k + pred, minlength=k * k).view(k, k)


def accuracy(model: torch.nn.Module, clinic: str, n: int = N_TEST, seed: int | None = None) -> float:
    """Accuracy on ``n`` fresh test images of ``clinic``."""
    ds = make_dataset(n, clinic=clinic, seed=TEST_SEEDS[clinic] if seed is None else seed)
    return (predict(model, ds.images) == ds.labels).float().mean().item()


def intervention_pair(n: int = N_TEST, seed: int = TEST_SEEDS["intervention"], clinic: str = "B",
                      artifact: str = "ruler"):
    """The same ``n`` lesions drawn without and with ``artifact`` ("ruler" or "ink"): ``(off, on)``."""
    if artifact not in ("ruler", "ink"):
        raise ValueError(f"artifact must be 'ruler' or 'ink', got {artifact!r}")
    return (make_dataset(n, clinic=clinic, seed=seed, **{artifact: False}),
            make_dataset(n, clinic=clinic, seed=seed, **{artifact: True}))


def artifact_intervention(model: torch.nn.Module, artifact: str = "ruler", target=MEL, n: int = N_TEST,
                          seed: int = TEST_SEEDS["intervention"], clinic: str = "B", pair=None) -> dict:
    """Show the model the same lesions with and without ``artifact`` and count the changed predictions.

    target        the class the artifact is suspected to stand for (an index or a name)
    add           of the images of other classes classified correctly without the artifact, the
                  share that becomes ``target`` when it is added
    remove        of the ``target`` images classified correctly with the artifact, the share whose
                  prediction changes when it is removed
    add_by_class  the "add" share for each other class
    pred_off, pred_on  the predictions themselves
    pair          an ``(off, on)`` pair from ``intervention_pair`` to reuse (then n, seed, clinic and
                  the artifact's drawing are taken from it)
    """
    t = CLASSES.index(target) if isinstance(target, str) else int(target)
    off, on = intervention_pair(n, seed, clinic, artifact) if pair is None else pair
    p_off, p_on, y = predict(model, off.images), predict(model, on.images), off.labels
    add_base = (y != t) & (p_off == y)
    remove_base = (y == t) & (p_on == y)
    by_class = {c: (p_on[add_base & (y == i)] == t).float().mean().item()
                for i, c in enumerate(CLASSES) if i != t}
    return {
        "add": (p_on[add_base] == t).float().mean().item(),
        "add_n": int(add_base.sum()),
        "remove": (p_off[remove_base] != p_on[remove_base]).float().mean().item(),
        "remove_n": int(remove_base.sum()),
        "add_by_class": by_class,
        "pred_off": p_off,
        "pred_on": p_on,
    }


def ruler_intervention(model: torch.nn.Module, n: int = N_TEST, seed: int = TEST_SEEDS["intervention"],
                       clinic: str = "B", pair=None) -> dict:
    """``artifact_intervention`` for the ruler and melanoma: the flip test of notebooks 00-14."""
    return artifact_intervention(model, "ruler", MEL, n, seed, clinic, pair)


def audit(model: torch.nn.Module) -> dict:
    """The figures the shipped models are held to (see tests/test_models.py)."""
    flips = ruler_intervention(model)
    return {"accuracy_A": accuracy(model, "A"), "accuracy_B": accuracy(model, "B"),
            "flip_add_ruler": flips["add"], "flip_remove_ruler": flips["remove"],
            "flip_add_n": flips["add_n"], "flip_remove_n": flips["remove_n"]}


def audit_sets() -> dict:
    """The images ``audit_clinic_c`` measures on, drawn once to audit several models."""
    sets = {c: make_dataset(N_TEST, clinic=c, seed=TEST_SEEDS[c]) for c in "ABC"}
    sets["ink pair"] = intervention_pair(artifact="ink")
    return sets


def audit_clinic_c(model: torch.nn.Module, sets: dict | None = None) -> dict:
    """The figures clinic C's models are held to: accuracy on each clinic, and the ink flip test on
    clinic B, where ink is independent of the class (see tests/test_models.py). ``sets``: the
    images of ``audit_sets()``, drawn once for several models (drawn here if None)."""
    sets = audit_sets() if sets is None else sets
    flips = artifact_intervention(model, "ink", CLINIC_C["ink"][0], pair=sets["ink pair"])
    acc = {f"accuracy_{c}": (predict(model, sets[c].images) == sets[c].labels).float().mean().item() for c in "ABC"}
    return {**acc, "flip_add_ink": flips["add"], "flip_remove_ink": flips["remove"],
            "flip_add_n": flips["add_n"], "flip_remove_n": flips["remove_n"]}


CLINIC_C_MODELS = ("clinic_c", "clinic_c_augmented", "clinic_c_rrr")


def _train_clinic_c(name: str, epochs: int | None, progress: bool) -> tuple:
    """Train one of ``CLINIC_C_MODELS``: ``(model, recipe, trained_on)``."""
    if name == "clinic_c":
        recipe = dict(RECIPE, seed_base=CLINIC_C_SEED_BASE)
        if epochs is not None:
            recipe["epochs"] = epochs
        return train_dermnet("C", progress=progress, **recipe), recipe, "C"
    from .models import load_dermnet
    kind = name.removeprefix("clinic_c_")
    recipe = dict(FIX_RECIPE, seed_base=FIX_SEED_BASE[kind], **({"lam": RRR_LAMBDA} if kind == "rrr" else {}))
    if epochs is not None:
        recipe["epochs"] = epochs
    kwargs = {k: v for k, v in recipe.items() if k != "seed_base"}
    model = train_fix(kind, load_dermnet("clinic_c"), progress=progress, **kwargs)
    return model, recipe, f"C, fine-tuned from clinic_c ({kind})"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Rebuild the DermNet checkpoints in data/.")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    parser.add_argument("--models", nargs="+", default=[*TRAIN_CLINIC, "random_labels", *CLINIC_C_MODELS],
                        choices=[*TRAIN_CLINIC, "random_labels", *CLINIC_C_MODELS],
                        help="random_labels (notebook 12) and clinic_c* (notebook 15): DermNet only")
    parser.add_argument("--arch", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--audit", action="store_true",
                        help="do not train: re-measure the shipped checkpoints' figures into the manifest")
    args = parser.parse_args(argv)
    if args.audit:
        from .models import load_dermnet, load_vit
        manifest = json.loads(MANIFEST.read_text())
        for arch in args.arch:
            for name in args.models:
                if name == "random_labels" or name in CLINIC_C_MODELS:
                    if arch != "dermnet":
                        continue
                    figures = (audit_random_labels if name == "random_labels" else audit_clinic_c)(load_dermnet(name))
                else:
                    figures = audit(load_vit(name) if arch == "vit" else load_dermnet(name))
                manifest["files"][checkpoint_path(name, arch).name]["figures"] = {
                    k: round(v, 4) for k, v in figures.items()}
                print(arch, name, figures)
        MANIFEST.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        return

    DATA_DIR.mkdir(exist_ok=True)
    manifest = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}
    manifest.setdefault("files", {})
    manifest["rebuild"] = "make data  (python -m helpers.train)"
    if "random_labels" in args.models and "dermnet" in args.arch:
        recipe = dict(RANDOM_LABELS_RECIPE)
        if args.epochs is not None:
            recipe["epochs"] = args.epochs
        start = time.perf_counter()
        model = train_random_labels(progress=not args.no_progress, **recipe)
        seconds = time.perf_counter() - start
        path = checkpoint_path("random_labels")
        torch.save(model.state_dict(), path)
        figures = audit_random_labels(model, recipe)
        manifest = json.loads(MANIFEST.read_text())  # as it is now: other builds write it too
        manifest["files"][path.name] = {
            "sha256": sha256(path), "bytes": path.stat().st_size, "trained_on_clinic": "A, labels permuted",
            "recipe": recipe, "train_seconds": round(seconds, 1),
            "figures": {k: round(v, 4) for k, v in figures.items()}}
        print(f"dermnet random_labels: trained in {seconds:.0f} s; "
              + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()))
        MANIFEST.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    for name in [n for n in CLINIC_C_MODELS if n in args.models and "dermnet" in args.arch]:
        start = time.perf_counter()
        model, recipe, trained_on = _train_clinic_c(name, args.epochs, not args.no_progress)
        seconds = time.perf_counter() - start
        path = checkpoint_path(name)
        torch.save(model.state_dict(), path)
        figures = audit_clinic_c(model)
        manifest = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {"files": {}}
        manifest.setdefault("files", {})[path.name] = {
            "sha256": sha256(path), "bytes": path.stat().st_size, "trained_on_clinic": trained_on,
            "recipe": recipe, "train_seconds": round(seconds, 1),
            "figures": {k: round(v, 4) for k, v in figures.items()}}
        MANIFEST.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        print(f"dermnet {name}: trained in {seconds:.0f} s; "
              + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()))
    for arch, name in [(a, n) for a in args.arch for n in args.models
                       if n != "random_labels" and n not in CLINIC_C_MODELS]:
        recipe = dict(VIT_RECIPE if arch == "vit" else RECIPE)
        if args.epochs is not None:
            recipe["epochs"] = args.epochs
        seed_base = (VIT_SEED_BASE if arch == "vit" else TRAIN_SEED_BASE)[name]
        start = time.perf_counter()
        model = train_dermnet(TRAIN_CLINIC[name], seed_base=seed_base, progress=not args.no_progress,
                              arch=arch, **recipe)
        seconds = time.perf_counter() - start
        path = checkpoint_path(name, arch)
        torch.save(model.state_dict(), path)
        figures = audit(model)
        manifest["files"][path.name] = {
            "sha256": sha256(path), "bytes": path.stat().st_size,
            "trained_on_clinic": TRAIN_CLINIC[name], "recipe": recipe,
            "train_seconds": round(seconds, 1), "figures": {k: round(v, 4) for k, v in figures.items()},
        }
        print(f"{arch} {name}: trained in {seconds:.0f} s on clinic {TRAIN_CLINIC[name]}; "
              + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()))
        MANIFEST.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
