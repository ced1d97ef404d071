"""Benchmarks of tokprob on the real default model and corpus, each against a baseline
measured in the same run.

    python -m benchmarks                       all of them (about 10 minutes on 2 CPU cores)
    python -m benchmarks --quick               smaller sizes, for a quick look
    python -m benchmarks --only alpha_memory   one of them (repeat --only for more)
    make bench ARGS="--quick"

| benchmark | measures | goal |
|---|---|---|
| alpha_throughput | α tokens/s ÷ bare forward tokens/s (float32, bfloat16) | ≥ 0.95 |
| regression_solver | statsmodels s ÷ fit_ols s; their largest relative difference | ≥ 5×; ≤ 1e-8 |
| alpha_memory | peak RSS of α at 4N tokens ÷ at N tokens | ≤ 1.1 |
| cached_rerun | encoding flow: cached re-run seconds ÷ cold run seconds | ≤ 3% |
| steering_sweep | steering sweep by full forward passes ÷ from cached hidden states | ≥ 20× |
| pruning_sweep | pruning sweep by full forward passes ÷ from cached hidden states | ≥ 20× |
| dask_shards | α in one process ÷ on a 2-worker local Dask cluster; same numbers | report; ≤ 1e-9 |
| corpus_scale | windows from a 1 GB .jsonl ÷ from a 10 MB one, same --max-tokens | ≤ 1.2 |
| scale_memory | `run encoding` peak RSS ÷ float32 model (GPT-2 XL); embeddings ÷ E | ≤ 1.3; ≤ 1.5 |

Benchmarks report; they never fail on a missed goal (the tests check correctness).
"""
