"""encoder_shrink.benchmarks: the `encoder-shrink bench` harness, synthetic real-architecture models and scripts."""

from encoder_shrink.benchmarks.bench import BACKENDS, BenchConfig, run_bench

__all__ = ["BACKENDS", "BenchConfig", "run_bench"]
