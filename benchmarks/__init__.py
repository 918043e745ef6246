"""encoder_shrink.benchmarks: memory, latency and quality harness for students against their teachers."""
