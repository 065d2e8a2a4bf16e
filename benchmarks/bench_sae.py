"""Sparse autoencoders: training throughput of our TopK SAE against dictionary-learning's.

    python -m benchmarks.bench_sae

The shipped SAEs' shape (128 channels, 1,024 latents, k = 32) and batch size (1,024 vectors), on
20,480 DermNet ``layer4`` vectors: 20 training steps of ``helpers.sae.train_sae`` (Adam, the decoder
gradient projected, decoder rows renormalized, dead-latent bookkeeping) against 20 calls of
dictionary-learning 0.1.0's ``TopKTrainer.update`` on the same batches (its step 0, which computes
a geometric median once, is run before the clock starts). Reported in activations per second and
as a time ratio (target: <= 1.0x theirs).
"""

from __future__ import annotations

import torch

from benchmarks.common import report, timed_pair
from helpers import sae as S
from helpers.data import make_dataset
from helpers.models import load_dermnet

STEPS, BATCH = 20, 1024


def main() -> None:
    model = load_dermnet("shortcut")
    acts = S.layer_vectors(model, make_dataset(320, clinic="B", seed=S.SEED_BASE["B"] + 9).images)
    acts = S.normalize(acts, S.norm_scale(acts))
    g = torch.Generator().manual_seed(0)
    batches = [acts[torch.randint(len(acts), (BATCH,), generator=g)] for _ in range(STEPS)]
    sae = S.TopKSAE(128, 1024, 32, seed=0)
    trainer = S.reference_trainer(sae)
    trainer.update(0, batches[0])  # their first step initializes b_dec (geometric median)
    step = [1]

    def ours():
        S.train_sae(sae, acts, steps=STEPS, batch_size=BATCH, seed=0, progress=False)

    def theirs():
        for b in batches:
            trainer.update(step[0], b)
            step[0] += 1

    t_ours, t_theirs = timed_pair(ours, theirs, repeats=7)
    report([(f"TopK SAE training, {STEPS} steps of {BATCH}", t_ours, t_theirs, "<= 1.0x")])
    n = STEPS * BATCH
    print(f"throughput: ours {n / t_ours:,.0f} activations/s, dictionary-learning {n / t_theirs:,.0f} activations/s")


if __name__ == "__main__":
    main()
