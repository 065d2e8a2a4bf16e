"""ViT attention methods: cost against the passes they need (same inputs).

    python -m benchmarks.bench_attention

- attention_maps on 64 images against timm's own unfused forward on the same batch (target <=
  1.1x): the floor for any method that forms the probabilities, which the fused kernel never does.
  attention_maps runs that unfused path and reads the probabilities it forms. Also measured: the
  unfused forward against the fused one, and attention_maps against the fused forward. In this
  small ViT the T x T attention (T = 65) is a large part of the work.
- relevance (Chefer et al.) on 32 images against one forward + backward to the input
  (target <= 1.3x): the attention is recomputed in the graph so that its gradient exists.
- attention flow for one image (65 max-flow problems) with SciPy's Dinic solver against
  networkx's default (preflow-push) on the same graph, and against rollout (no target).
"""

from __future__ import annotations

import networkx as nx
import torch

from benchmarks.common import report, timed, timed_pair
from helpers.attention import _fused, attention_flow, attention_maps, relevance, rollout
from helpers.data import make_dataset
from helpers.models import load_vit


def main() -> None:
    model = load_vit("shortcut")
    ds = make_dataset(64, clinic="A", seed=0)
    x, t = ds.images, ds.labels

    def plain():
        with torch.no_grad():
            model(x)

    def forward_backward():
        xg = x[:32].clone().requires_grad_(True)
        torch.autograd.grad(model(xg).gather(1, t[:32, None]).sum(), xg)

    def unfused():
        for block in model.blocks:
            block.attn.fused_attn = False
        try:
            plain()
        finally:
            for block in model.blocks:
                block.attn.fused_attn = True

    rows = [("attention_maps, 64 images vs unfused forward", *timed_pair(lambda: attention_maps(model, x), unfused,
                                                                          30), "<= 1.1"),
            ("attention_maps vs plain (fused) forward", *timed_pair(lambda: attention_maps(model, x), plain, 30),
             "(reference)"),
            ("timm unfused forward vs fused", *timed_pair(unfused, plain, 30), "(reference)"),
            ("relevance, 32 images vs forward+backward", *timed_pair(lambda: relevance(model, x[:32], t[:32]),
                                                                     forward_backward, 30), "<= 1.3")]
    att = attention_maps(model, x[:1])
    mats = [m[0].numpy() for m in _fused(att, 0.5, "mean")]
    n, tokens = len(mats), mats[0].shape[0]
    graph = nx.DiGraph()
    for level, m in enumerate(mats):
        for i in range(tokens):
            for j in range(tokens):
                graph.add_edge((level + 1, i), (level, j), capacity=float(m[i, j]))
    ours_flow = timed(lambda: attention_flow(att), repeats=3)
    nx_flow = timed(lambda: [nx.maximum_flow_value(graph, (n, 0), (0, j)) for j in range(8)], repeats=1, warmup=0)
    rows += [("flow, 1 image: SciPy Dinic vs networkx", ours_flow, nx_flow * tokens / 8,
              "(networkx timed on 8 tokens, x T/8)"),
             ("flow vs rollout, 1 image", ours_flow, timed(lambda: rollout(att), repeats=20), "(how much dearer)")]
    report(rows)


if __name__ == "__main__":
    main()
