"""``passerelle bench runtime``: the side-by-side runtime benchmark against the configured stack."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from passerelle.errors import PasserelleError
from passerelle.settings import load


def _runtime(args: argparse.Namespace) -> int:
    from bench import runtime

    settings = load()
    argv = [
        "--bootstrap", settings.bootstrap_servers, "--registry", settings.schema_registry_url,
        "--records", str(args.records), "--rounds", str(args.rounds), "--faust-records", str(args.faust_records),
        "--rate", str(args.rate), "--latency-seconds", str(args.latency_seconds), "--commit-ms", str(args.commit_ms),
        "--dlq", args.dlq, "--timeout", str(args.timeout),
    ]  # fmt: skip
    if args.skip:
        argv += ["--skip", *args.skip]
    return runtime.main(argv)


def _enrich(args: argparse.Namespace) -> int:
    from bench import enrich

    settings = load()
    argv = [
        "--records", str(args.records), "--rounds", str(args.rounds), "--latency-seconds", str(args.latency_seconds),
        "--commit-ms", str(args.commit_ms), "--load", str(args.load), "--timeout", str(args.timeout),
    ]  # fmt: skip
    argv += ["--latency-runs", str(args.latency_runs), "--warmup-seconds", str(args.warmup_seconds)]
    if args.latency_commit_ms is not None:
        argv += ["--latency-commit-ms", str(args.latency_commit_ms)]
    return enrich.main(argv, settings.bootstrap_servers, settings.schema_registry_url)


def _postview(args: argparse.Namespace) -> int:
    from bench import postview

    settings = load()
    argv = [
        "--records", str(args.records), "--rounds", str(args.rounds), "--commit-ms", str(args.commit_ms),
        "--min-commit-ms", str(args.min_commit_ms), "--batch-size", str(args.batch_size),
        "--timeout", str(args.timeout),
    ]  # fmt: skip
    return postview.main(argv, settings.bootstrap_servers, settings.schema_registry_url)


def _paths(args: argparse.Namespace) -> int:
    from bench import paths

    settings = load()
    argv = [
        "--records", str(args.records), "--rounds", str(args.rounds), "--commit-ms", str(args.commit_ms),
        "--min-commit-ms", str(args.min_commit_ms), "--batch-size", str(args.batch_size),
        "--timeout", str(args.timeout),
    ]  # fmt: skip
    return paths.main(argv, settings.bootstrap_servers, settings.schema_registry_url)


def _collector(args: argparse.Namespace) -> int:
    from bench import collector

    settings = load()
    argv = list(args.collector_argv)
    if argv[:1] == ["--"]:  # `passerelle bench collector -- --seconds 10`: the separator is ours, not its
        argv = argv[1:]
    return collector.main(argv, settings.bootstrap_servers, settings.schema_registry_url)


def _collector_wrk(args: argparse.Namespace) -> int:
    from bench import collector_wrk

    settings = load()
    return collector_wrk.run(args, settings.bootstrap_servers, settings.schema_registry_url)


def _query(args: argparse.Namespace) -> int:
    from bench import query

    settings = load()
    return query.run(args, settings.bootstrap_servers, settings.schema_registry_url)


def _state(args: argparse.Namespace) -> int:
    from bench import state

    settings = load()
    return state.run(args, settings.bootstrap_servers, settings.schema_registry_url)


def _not_here(args: argparse.Namespace) -> int:
    raise PasserelleError(
        "the benchmarks are not installed with the package: run `passerelle bench` from a checkout of the "
        "repository (its bench/ folder), e.g. `./dev setup && .venv/bin/passerelle bench enrich`"
    )


def _checkout_on_path() -> None:
    """Put the checkout's root on ``sys.path`` when bench/ is next to this package (an editable install).

    ``python -m passerelle`` from the checkout finds ``bench`` through the
    current directory; the ``passerelle`` console script does not, although
    the benchmarks sit right beside the code it runs.
    """
    root = Path(__file__).resolve().parents[2]
    if (root / "bench" / "__init__.py").is_file() and str(root) not in sys.path:
        sys.path.append(str(root))


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``bench runtime``."""
    _checkout_on_path()
    try:
        from bench import runtime
    except ModuleNotFoundError:  # an installed wheel: bench/ stays in the repository
        p = sub.add_parser("bench", help="benchmarks (from a checkout of the repository only)")
        p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        p.set_defaults(func=_not_here)
        return

    p = sub.add_parser(
        "bench",
        help="benchmarks, printed side by side (ours vs raw confluent-kafka vs faust)",
        description="Benchmarks that print figures and ratios measured side by side in one run. "
        "They run against PASSERELLE_BOOTSTRAP_SERVERS / PASSERELLE_SCHEMA_REGISTRY_URL (start the local "
        "stack with `passerelle up`), create their own topics and delete them afterwards.",
    )
    bsub = p.add_subparsers(dest="bench_command", metavar="BENCH")
    bsub.required = True
    q = bsub.add_parser(
        "runtime",
        help="raw confluent-kafka loop vs passerelle at-least-once / exactly-once vs a faust agent",
        description=runtime.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    runtime.add_arguments(q)
    q.set_defaults(func=_runtime)

    from bench import enrich

    q = bsub.add_parser(
        "enrich",
        help="enrichment processor (at-least-once, exactly-once) vs the raw loop doing the same join; latency",
        description=enrich.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    enrich.add_arguments(q)
    q.set_defaults(func=_enrich)
    from bench import postview

    q = bsub.add_parser(
        "postview",
        help="post-view processor (at-least-once, exactly-once) vs the raw loop doing the same join",
        description=postview.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    postview.add_arguments(q)
    q.set_defaults(func=_postview)
    from bench import paths

    q = bsub.add_parser(
        "paths",
        help="conversion-paths processor (at-least-once, exactly-once) vs the raw loop doing the same bookkeeping",
        description=paths.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    paths.add_arguments(q)
    q.set_defaults(func=_paths)
    q = bsub.add_parser(
        "collector",
        help="HTTP collector: accepted events/s for pixel hits and batches of 100, on loopback",
        description="Start the collector against the configured broker and registry and load it from local "
        "clients for a bounded time. Options after `collector` are passed on (see python -m bench.collector -h).",
    )
    q.add_argument("collector_argv", nargs=argparse.REMAINDER, help="options for bench/collector.py")
    q.set_defaults(func=_collector)
    from bench import collector_wrk

    q = bsub.add_parser(
        "collector-wrk",
        help="HTTP collector vs a minimal endpoint doing the same essential work, loaded by wrk, on loopback",
        description=collector_wrk.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    collector_wrk.add_arguments(q)
    q.set_defaults(func=_collector_wrk)
    from bench import query

    q = bsub.add_parser(
        "query",
        help="dashboard queries through the partner API vs the same SQL on DuckDB; warehouse sink vs a raw loop",
        description=query.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    query.add_arguments(q)
    q.set_defaults(func=_query)
    from bench import state

    q = bsub.add_parser(
        "state",
        help="state stores: in-memory vs RocksDB; RSS per key, restore keys/s (empty disk, checkpoint), throughput",
        description=state.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    state.add_arguments(q)
    q.set_defaults(func=_state)
