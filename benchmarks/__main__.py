"""Run every benchmark: ``python -m benchmarks`` (or ``make bench``), ending with how cost grows
(``bench_scaling``: a table and a plot in build/bench/). The full-size bars, resnet50 and vit_b_16
at 224 px (about 10 minutes on 2 cores), run apart: ``python -m benchmarks.bench_full_size``."""

from benchmarks import (
    bench_224,
    bench_attention,
    bench_cam,
    bench_concepts,
    bench_data,
    bench_deconv,
    bench_evaluation,
    bench_featurevis,
    bench_gradients,
    bench_perturbation,
    bench_sae,
    bench_scaling,
)

if __name__ == "__main__":
    bench_data.main()
    print()
    bench_gradients.main()
    print()
    bench_cam.main()
    print()
    bench_perturbation.main()
    print()
    bench_224.main()
    print()
    bench_attention.main()
    print()
    bench_featurevis.main()
    print()
    bench_concepts.main()
    print()
    bench_deconv.main()
    print()
    bench_evaluation.main()
    print()
    bench_sae.main()
    print()
    bench_scaling.main([])
