"""What the side-by-side benchmarks (``bench.runtime``, ``bench.enrich``, ``bench.postview``) share around
their workers: running one worker process for its result line, interleaved rounds of throughput runs, the
table of medians, and the command line that prints the report.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from passerelle.schemas.clients import Connection

ROOT = Path(__file__).resolve().parent.parent


def worker_result(impl: str, cmd: Sequence[str], timeout: float) -> dict[str, Any]:
    """Run a worker process from the repository's root; its last JSON line (elapsed, records, peak RSS)."""
    proc = subprocess.run(list(cmd), cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{impl} worker failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def interleaved(
    impls: Sequence[str], rounds: int, measure: Callable[[str, int], dict[str, Any]], unit: str
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """``rounds`` throughput runs of each implementation, every other round in reverse order (so that a noisy
    moment hits all of them): the rates (records / elapsed) and the peak RSS of each."""
    rates: dict[str, list[float]] = {i: [] for i in impls}
    rss: dict[str, float] = {i: 0.0 for i in impls}
    for round_ in range(rounds):
        for impl in impls if round_ % 2 == 0 else tuple(reversed(impls)):
            res = measure(impl, round_)
            rates[impl].append(res["records"] / res["elapsed"])
            rss[impl] = max(rss[impl], res["peak_rss_mb"])
            print(f"round {round_ + 1} {impl:<4} {rates[impl][-1]:>9,.0f} {unit}", file=sys.stderr, flush=True)
    return rates, rss


def medians(rates: Mapping[str, list[float]]) -> dict[str, float]:
    return {i: statistics.median(r) for i, r in rates.items()}


def table(
    labels: Mapping[str, str], med: Mapping[str, float], rss: Mapping[str, float], unit: str, width: int
) -> list[str]:
    """The heading and one line per implementation: median rate, its ratio to the raw loop's, peak RSS."""
    lines = [f"{'implementation':<32}{unit:>{width}}{'x raw':>8}{'peak RSS MB':>13}"]
    for impl, label in labels.items():
        lines.append(f"{label:<32}{med[impl]:>{width},.0f}{med[impl] / med['raw']:>8.2f}{rss[impl]:>13.0f}")
    return lines


def main(
    prog: str,
    doc: str | None,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace, Connection], str],
    argv: Sequence[str] | None,
    bootstrap: str | None,
    registry: str | None,
) -> int:
    """A side-by-side bench's command line: the broker and registry (the local stack's by default), its own
    options; prints what ``run`` reports."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default=bootstrap or "127.0.0.1:9092")
    parser.add_argument("--registry", default=registry or "http://127.0.0.1:8081")
    add_arguments(parser)
    args = parser.parse_args(argv)
    conn = Connection.plain(args.bootstrap, args.registry)  # the local stack: no security properties
    print(run(args, conn), flush=True)
    return 0
