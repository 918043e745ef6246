"""Benchmark: the CPU time of `encoder-shrink --help` and of each subcommand's `--help`, and what they print to stderr.

Each command runs in a fresh process (`python -m encoder_shrink.cli ... --help`), `--repeats` times; the figure is the
median of the process's user + system CPU seconds (from `resource.getrusage`), which, unlike wall time, does not
depend on what else the machine runs. The target (issue 29) is < 2 s for each, and no library warning on stderr.

Run:  python -m encoder_shrink.benchmarks.cli_startup --output benchmarks/results/cli_startup
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

from encoder_shrink.files import pyplot, save_figure, write_results

logger = logging.getLogger(__name__)
# Issue 29's target: each help answers in under this many CPU seconds on the 2-core machine.
TARGET = 2.0


def all_commands() -> list[str]:
    """The top level and every subcommand the parser has (a new command is timed without an edit here)."""
    import argparse

    from encoder_shrink.cli import build_parser

    def walk(parser, words=()):
        found = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    found += walk(child, (*words, name))
        return found or ([" ".join(words)] if words else [])

    return ["", *walk(build_parser())]


def _cpu_seconds(command: list[str]) -> tuple[float, str]:
    """CPU seconds (user + system) of one child process running `command`, and its stderr."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "COLUMNS": "119"}, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), done.stderr


def measure(commands: list[str] | None = None, repeats: int = 3) -> dict:
    """Median CPU seconds of each `--help`, and whether stderr stayed empty."""
    from tqdm.auto import tqdm

    rows = {}
    for name in tqdm(all_commands() if commands is None else list(commands), desc="commands", unit="command"):
        command = [sys.executable, "-m", "encoder_shrink.cli", *name.split(), "--help"]
        runs = [_cpu_seconds(command) for _ in range(repeats)]
        seconds = statistics.median(cpu for cpu, _ in runs)
        stderr = runs[-1][1].strip()
        rows[f"encoder-shrink {name} --help".replace("  ", " ")] = {
            "cpu_seconds": round(seconds, 3), "under_target": seconds < TARGET, "stderr": stderr[:300]}
        logger.info("%s: %.2f s CPU", name or "(top level)", seconds)
    return {"benchmark": "cli_startup", "device": "cpu", "repeats": repeats, "target_seconds": TARGET,
            "variants": rows}


def table(results: dict) -> str:
    lines = [f"CPU seconds of each help (median of {results['repeats']} fresh processes); target < "
             f"{results['target_seconds']} s and an empty stderr.", "",
             "| command | CPU s | < target | stderr |", "|---|---:|:---:|---|"]
    for name, r in results["variants"].items():
        lines.append(f"| `{name}` | {r['cpu_seconds']:.2f} | {'yes' if r['under_target'] else 'NO'} | "
                     f"{r['stderr'] or 'empty'} |")
    return "\n".join(lines)


def _chart(results: dict, path: Path) -> None:
    plt = pyplot()
    rows = list(results["variants"].items())
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(rows) + 1.5))
    ax.barh([n.removeprefix("encoder-shrink ") for n, _ in rows], [r["cpu_seconds"] for _, r in rows],
            color=["#27a" if r["under_target"] else "#c63" for _, r in rows])
    ax.axvline(results["target_seconds"], color="#c63", linestyle="--", linewidth=1, label="target")
    ax.set_xlabel("CPU seconds")
    ax.invert_yaxis()
    ax.legend(loc="lower right")
    save_figure(fig, path, dpi=110)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="benchmarks/results/cli_startup")
    parser.add_argument("--commands", nargs="+", help="subcommands to time ('' for the top level; default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per command")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = measure(args.commands, args.repeats)
    output = Path(args.output)
    write_results(output, results, table(results), _chart)
    print(table(results))


if __name__ == "__main__":
    main()
