"""The benchmark suite: the toolkit measured against its physical limits (`make bench`, `python -m bench`).

One module per benchmark (startup, inner_loop, push_delta, pytorch, xgboost_extmem, xgboost_e2e), each with
`run(cfg, ctx)` returning its measurements and `render(result)` writing its section of BENCHMARKS.md;
xgb_reference and torch_reference are the references run as their own processes. Results go to
bench/results/<name>.json; generated data is cached in bench/data/ (git-ignored).
"""
