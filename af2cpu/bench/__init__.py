"""af2cpu.bench: the benchmarks behind `af2cpu bench`.

- :mod:`.model`: one model pass, af2cpu against DeepMind's JAX AlphaFold on the same weights and
  features (seconds, speed-up, GFLOP/s against a measured GEMM peak, per-module breakdown);
- :mod:`.memory`: peak RSS of one pass per length in a fresh process, against the memory planner;
- :mod:`.batch`: end-to-end throughput of a batch, `af2cpu predict` against an AlphaFold2-style run;
- :mod:`.reference`: DeepMind's model configured as the oracle (docs/reference.md);
- :mod:`.machine`: what a benchmark ran on, and the GEMM peaks.
"""

# The preset the model and memory benchmarks run (its architecture, shortened with --blocks).
PRESET = "model_1_ptm"
# DeepMind's pipeline_multimer gives every complex 4 template slots (the multimer benchmarks' inputs).
MULTIMER_TEMPLATES = 4
