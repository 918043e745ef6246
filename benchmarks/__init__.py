"""encoder_shrink.benchmarks: the `encoder-shrink bench` harness, synthetic real-architecture models and scripts."""

from typing import TYPE_CHECKING

from encoder_shrink.lazy import lazy_exports

__all__ = ["BenchConfig", "bench_backends", "run_bench"]

# Each name is imported from its module on first use, so importing this package imports none of them.
_EXPORTS = {
    "bench_backends": "encoder_shrink.benchmarks.bench",
    "BenchConfig": "encoder_shrink.benchmarks.bench",
    "run_bench": "encoder_shrink.benchmarks.bench",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from encoder_shrink.benchmarks.bench import BenchConfig, bench_backends, run_bench
