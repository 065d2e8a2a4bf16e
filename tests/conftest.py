"""Datasets and models shared by several tests (drawn once per session)."""

import shutil

import pytest
import torch
import torchvision
from contract_checks import seeded as _seeded

import helpers.models as models
from helpers.data import make_dataset
from helpers.models import load_dermnet
from helpers.train import N_TEST, TEST_SEEDS, intervention_pair

torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture(scope="session")
def clinic_a():
    return make_dataset(4000, clinic="A", seed=123)


@pytest.fixture(scope="session")
def clinic_b():
    return make_dataset(4000, clinic="B", seed=321)


@pytest.fixture(scope="session")
def test_sets():
    """The held-out test sets the figures are measured on (seeds disjoint from training)."""
    return {c: make_dataset(N_TEST, clinic=c, seed=TEST_SEEDS[c]) for c in "AB"}


@pytest.fixture(scope="session")
def pair():
    return intervention_pair()


@pytest.fixture(scope="session")
def shortcut():
    return load_dermnet("shortcut")


@pytest.fixture(scope="session")
def debiased():
    return load_dermnet("debiased")


@pytest.fixture(scope="session")
def batch(test_sets):
    """Eight held-out clinic-A images and their labels, for method tests."""
    ds = test_sets["A"][:8]
    return ds.images, ds.labels


@pytest.fixture
def data_copy(tmp_path, monkeypatch):
    """A copy of data/ that the test may damage."""
    for f in models.DATA_DIR.iterdir():
        if f.is_file():
            shutil.copy(f, tmp_path / f.name)
    monkeypatch.setattr(models, "DATA_DIR", tmp_path)
    monkeypatch.setattr(models, "MANIFEST", tmp_path / "MANIFEST.json")
    return tmp_path


# torchvision models with random weights (seeded), one per test module, and two 64-px images

@pytest.fixture(scope="module")
def resnet18():
    return _seeded(torchvision.models.resnet18, num_classes=10)


@pytest.fixture(scope="module")
def vgg11():
    return _seeded(torchvision.models.vgg11, num_classes=10)


@pytest.fixture(scope="module")
def mobilenet():
    return _seeded(torchvision.models.mobilenet_v3_small, num_classes=10)


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
