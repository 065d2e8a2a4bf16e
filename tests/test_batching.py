"""batch_size="auto": the memory budget, the policy's choices, and results that do not depend on the batch."""

import copy
import inspect

import pytest
import torch

import helpers
from helpers import batching
from helpers.cam import score_cam
from helpers.concepts import layer_activations, layer_gradients
from helpers.evaluation import deletion, faithfulness_correlation, insertion
from helpers.featurevis import receptive_field, top_activating
from helpers.gradients import integrated_gradients, smoothgrad
from helpers.perturbation import expected_gradients, kernel_shap, lime, occlusion
from helpers.sae import layer_vectors
from helpers.train import logits


@pytest.fixture(autouse=True)
def _fresh_policy():
    batching.forget()
    yield
    batching.forget()


# ---- the budget ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, nbytes", [("1GB", 10**9), ("512MB", 512 * 10**6), ("1.5GiB", 3 * 2**29),
                                          ("2g", 2 * 2**30), (" 64 KiB ", 64 * 2**10), (4096, 4096)])
def test_memory_sizes_parse(text, nbytes):
    assert batching.parse_memory(text) == nbytes


@pytest.mark.parametrize("bad", ["", "lots", "1 parsec", "-1GB", 0, -5, 1.5, True, None])
def test_bad_budgets_get_a_clear_error(bad):
    with pytest.raises(ValueError, match="budget"):
        helpers.set_memory_budget(bad)


@pytest.mark.parametrize("bad", [0, -1, True, 2.0, "fast", "0MB", None])
def test_bad_batch_sizes_name_the_argument(bad):
    with pytest.raises(ValueError, match="batch_size must be a positive int, 'auto' or a memory size"):
        batching.check_batch_size(bad)


def test_set_memory_budget_sets_and_restores():
    before = helpers.memory_budget()
    with helpers.set_memory_budget("256MB"):
        assert helpers.memory_budget() == 256 * 10**6
        with helpers.set_memory_budget(1000):
            assert helpers.memory_budget() == 1000
        assert helpers.memory_budget() == 256 * 10**6
    assert helpers.memory_budget() == before == batching.DEFAULT_MEMORY_BUDGET
    previous = helpers.set_memory_budget("2GB")  # as a plain call it stays set
    try:
        assert helpers.memory_budget() == 2 * 10**9
    finally:
        helpers.set_memory_budget(previous.previous)
    assert helpers.memory_budget() == before


def test_the_environment_variable_sets_the_default(monkeypatch):
    """What ``import helpers`` reads (``_budget`` is set from ``_budget_from_env()`` at import),
    read here in process: a subprocess would spend seconds importing PyTorch."""
    monkeypatch.setenv(batching.ENV_VAR, "300MB")
    assert batching._budget_from_env() == 300 * 10**6
    monkeypatch.setenv(batching.ENV_VAR, "plenty")
    with pytest.raises(ValueError, match=batching.ENV_VAR):
        batching._budget_from_env()
    monkeypatch.delenv(batching.ENV_VAR)
    assert batching._budget_from_env() == batching.DEFAULT_MEMORY_BUDGET
    assert "_budget = _budget_from_env()" in inspect.getsource(batching)


# ---- what the policy measures and chooses --------------------------------------------------

def test_peak_memory_counts_what_is_alive_at_once():
    with batching.PeakMemory() as mem:
        a = torch.ones(1000, 1000)  # 4 MB
        b = torch.ones(1000, 1000)  # 8 MB alive
        del a, b
        c = torch.ones(500, 1000)  # 2 MB: the peak stays 8 MB
        del c
    assert 8e6 <= mem.peak < 8.1e6


class _FakeClock:
    """The policy's clock, advanced only by the steps below, so what the policy chooses cannot
    depend on the timing noise of a shared machine."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = _FakeClock()
    monkeypatch.setattr(batching, "time", fake)
    return fake


def _allocating_step(clock, bytes_per_sample, fixed=0, sizes=None, pass_seconds=0.01):
    """A pass that allocates `bytes_per_sample` a sample plus `fixed` and costs `pass_seconds`
    whatever its size, so a larger pass is always faster per sample: memory alone limits it."""
    def step(lo, hi):
        if sizes is not None:
            sizes.append(hi - lo)
        keep = [torch.empty(int(bytes_per_sample * (hi - lo)) // 4 + fixed // 4)]
        keep[0].fill_(1.0)
        clock.now += pass_seconds
    return step


def test_no_auto_pass_is_larger_than_the_budget_allows(clock):
    """The counted tensors are held to COUNTED_SHARE of the budget (the rest is for what the
    count misses): with 1 MB a sample and 3 MB fixed, a 20 MB budget allows (13 - 3) / 1 = 10."""
    share = batching.COUNTED_SHARE
    sizes = []
    step = _allocating_step(clock, 10**6, fixed=3 * 10**6, sizes=sizes)  # 1 MB a sample, 3 MB whatever the size
    batching.run_batches(step, 500, "20MB", ("test", 1))
    assert sum(sizes) == 500 and sizes[:2] == [2, 4]
    assert max(sizes) <= int(share * 20 - 3)
    learnt = batching._learnt[("test", 1)]
    assert learnt.bytes_per_sample == pytest.approx(10**6, rel=0.01)
    assert learnt.fixed_bytes == pytest.approx(3 * 10**6, rel=0.01)
    sizes.clear()
    with helpers.set_memory_budget(int(6 * 10**6 / share) + 10):  # a smaller budget: 3 samples a pass
        batching.run_batches(step, 50, "auto", ("test", 1))
    assert max(sizes) == 3 and sum(sizes) == 50
    sizes.clear()
    batching.run_batches(step, 50, "4MB", ("test", 1))  # below the fixed cost: one sample a pass
    assert set(sizes) == {1}


def test_auto_stops_growing_where_the_time_per_sample_stops_falling(clock):
    sizes = []

    def step(lo, hi):  # per sample: 10 ms at 2, 5 at 4, 2.5 at 8, 2.5 at 16 (no gain past 8)
        n = hi - lo
        sizes.append(n)
        clock.now += 0.0025 * max(n, 8)

    batching.run_batches(step, 200, "auto", ("test", 2))
    learnt = batching._learnt[("test", 2)]
    assert learnt.settled and learnt.size == 8, sizes
    assert sum(sizes) == 200 and sizes[:5] == [2, 4, 8, 16, 16], sizes  # 16 twice: no gain, a second try
    assert set(sizes[5:-1]) == {8}
    sizes.clear()
    batching.run_batches(step, 40, "auto", ("test", 2))  # a second call starts at the settled size
    assert sizes == [8] * 5


def test_an_int_is_that_many_samples_and_few_samples_are_not_learnt_from():
    sizes = []
    batching.run_batches(lambda lo, hi: sizes.append(hi - lo), 10, 4, ("test", 3))
    assert sizes == [4, 4, 2] and ("test", 3) not in batching._learnt
    sizes.clear()
    batching.run_batches(lambda lo, hi: sizes.append(hi - lo), 5, "auto", ("test", 3))
    assert sizes == [2, 3] and ("test", 3) not in batching._learnt


# ---- the results do not depend on the batch ------------------------------------------------

def _close(a, b, what, tol):
    if isinstance(a, tuple):
        for u, v in zip(a, b, strict=True):
            _close(u, v, what, tol)
        return
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    gap, scale = (a - b).abs().max().item(), b.abs().max().item()
    assert gap <= tol * scale, f"{what}: max gap {gap:.3e} for values up to {scale:.3e}"


def _methods(model, layer, x, t):
    """Every batched method on (model, x), each taking batch_size. Not infidelity: there, as in
    Captum, the split decides which random draw perturbs which image (its default is None)."""
    seg = torch.arange(16).view(4, 4).repeat_interleave(x.shape[-1] // 4, 0).repeat_interleave(x.shape[-1] // 4, 1)
    attr = x.mean(1, keepdim=True)
    return {
        "integrated_gradients": lambda bs: integrated_gradients(model, x, t, steps=12, batch_size=bs),
        "smoothgrad": lambda bs: smoothgrad(model, x, t, n_samples=8, generator=torch.Generator().manual_seed(0),
                                            variant="var", batch_size=bs),
        "expected_gradients": lambda bs: expected_gradients(model, x, t, x.flip(0), n_samples=6, batch_size=bs),
        "occlusion": lambda bs: occlusion(model, x, t, window=16, stride=8, batch_size=bs),
        "lime": lambda bs: lime(model, x, t, seg, n_samples=40, batch_size=bs),
        "kernel_shap": lambda bs: kernel_shap(model, x, t, seg, n_samples=40, batch_size=bs),
        "score_cam": lambda bs: score_cam(model, x[:1], t[:1], layer=layer, batch_size=bs),
        "deletion": lambda bs: deletion(model, x, t, attr, steps=8, batch_size=bs),
        "insertion": lambda bs: insertion(model, x, t, attr, steps=8, batch_size=bs),
        "faithfulness_correlation": lambda bs: faithfulness_correlation(model, x, t, attr, n_runs=12,
                                                                        subset_size=64, batch_size=bs),
        "layer_gradients": lambda bs: layer_gradients(model, layer, x.repeat(3, 1, 1, 1), t.repeat(3),
                                                      batch_size=bs)[layer],
        "layer_activations": lambda bs: layer_activations(model, layer, x.repeat(3, 1, 1, 1), batch_size=bs),
        "layer_vectors": lambda bs: layer_vectors(model, x.repeat(3, 1, 1, 1), layer, batch_size=bs),
        "top_activating": lambda bs: top_activating(model, layer, 1, x.repeat(3, 1, 1, 1) * torch.linspace(
            0.5, 1, 3 * x.shape[0]).view(-1, 1, 1, 1), k=3, batch_size=bs),
        "receptive_field": lambda bs: torch.tensor(receptive_field(model, layer, 1, 1, image_size=32,
                                                                   batch_size=bs)),
        "logits": lambda bs: logits(model, x.repeat(3, 1, 1, 1), batch_size=bs),
    }


ALL = 10**6  # every sample in one pass
FORWARD_ONLY = ("occlusion", "lime", "kernel_shap", "score_cam", "deletion", "insertion", "faithfulness_correlation",
                "layer_activations", "layer_vectors", "top_activating", "receptive_field", "logits")


def _model(which, request):
    if which == "dermnet":
        return request.getfixturevalue("shortcut"), "layer3", request.getfixturevalue("batch")[0][:3], [1, 4, 2]
    images = request.getfixturevalue("images")[..., ::2, ::2].contiguous()  # 32 px: a 2 x 2 grid at layer3
    return request.getfixturevalue("resnet18"), "layer3", images, [1, 4]


def _agree_across_batches(methods, tol):
    for name, run in methods.items():
        everything = run(ALL)
        batching.forget()
        _close(run("auto"), everything, f"{name}, auto", tol)  # its passes: 2, 4, 8, ... (forward: 4, 8, ...)
        _close(run(1), everything, f"{name}, one at a time", tol)


@pytest.mark.parametrize("which", ["dermnet", "resnet18"])
def test_every_batched_method_gives_the_same_numbers_whatever_the_batch(which, request):
    """In float64, where a float32 kernel's batch-dependent round-off cannot flip a ReLU unit that
    sits within round-off of zero: what is left to differ is the methods' own bookkeeping (which
    sample is which, the noise drawn, the sums), and it must not."""
    model, layer, x, t = _model(which, request)
    model64 = copy.deepcopy(model).double()
    _agree_across_batches(_methods(model64, layer, x.double(), torch.tensor(t)), 1e-10)


@pytest.mark.parametrize("which", ["dermnet", "resnet18"])
def test_forward_only_methods_agree_at_float32_round_off_whatever_the_batch(which, request):
    """In float32 a batch of one sample runs other kernels (DermNet's logits move by 1e-5);
    a method that only reads scores keeps that size of gap. (A gradient can jump where a ReLU unit
    sits within round-off of zero: one of DermNet's IG path points moves by 0.07 between a batch
    of 1 and of 36; the float64 test above is the check for those methods.)"""
    model, layer, x, t = _model(which, request)
    methods = _methods(model, layer, x, torch.tensor(t))
    _agree_across_batches({k: v for k, v in methods.items() if k in FORWARD_ONLY}, 1e-4)
