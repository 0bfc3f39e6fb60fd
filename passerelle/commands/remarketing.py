"""``passerelle remarketing``: run the two-step remarketing sequencer (faust-streaming).

The one command line of the sequencer. It reads ``RemarketingSettings``: the
sequence's own variables and the runtime's, each honoured, or refused with a
one-line error where faust cannot do what it asks:

- ``PASSERELLE_PROCESSING_GUARANTEE``: the sequencer is at least once (faust
  commits an offset after the producer flushed; message ids are deterministic
  and the emailing bridge sends them as idempotency keys, so the partner
  delivers each message once). Unset, or ``at_least_once``, runs;
  ``exactly_once`` is refused rather than accepted and not delivered.
- ``PASSERELLE_MIN_COMMIT_INTERVAL_MS`` exists for read_committed readers of
  transactional outputs; the sequencer's outputs are visible once
  acknowledged, so setting it is refused as meaningless here.
- ``PASSERELLE_COMMIT_INTERVAL_MS``, ``_BATCH_SIZE``, ``_MAX_ERROR_RATIO``,
  ``_DEAD_LETTER_TOPIC``, ``_INSTANCE_ID``, ``_METRICS_PORT``, ``_STATE_DIR``
  and ``_REMARKETING_*`` are honoured (``remarketing_config``).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import textwrap
from typing import TYPE_CHECKING

from passerelle.errors import PasserelleError
from passerelle.settings import RemarketingSettings, load

if TYPE_CHECKING:  # the sequencer (faust) loads only when it runs, never for --help
    from passerelle.streams.remarketing.config import RemarketingConfig, RemarketingTopics

DEFAULT_APP_ID = "passerelle-remarketing"


def check_settings(settings: RemarketingSettings) -> None:
    """Refuse, in one line each, the runtime settings the faust sequencer cannot honour."""
    given = settings.model_fields_set
    if "processing_guarantee" in given and settings.processing_guarantee == "exactly_once":
        raise PasserelleError(
            "PASSERELLE_PROCESSING_GUARANTEE=exactly_once cannot apply to `passerelle remarketing`: the sequencer "
            "runs on faust-streaming at least once (deterministic message ids, sent by the emailing bridge as "
            "idempotency keys, make the partner deliver each message once); set it to at_least_once, or leave it "
            "unset, for this process"
        )
    if "min_commit_interval_ms" in given:
        raise PasserelleError(
            "PASSERELLE_MIN_COMMIT_INTERVAL_MS does not apply to `passerelle remarketing`: it makes transactional "
            "outputs visible sooner, and the sequencer's are visible once acknowledged (its offsets commit every "
            "PASSERELLE_COMMIT_INTERVAL_MS); leave it unset for this process"
        )


def remarketing_config(
    settings: RemarketingSettings, app_id: str = DEFAULT_APP_ID, topics: RemarketingTopics | None = None
) -> RemarketingConfig:
    """The sequencer's configuration from its settings.

    ``topics``: other input and output names (tests, shared clusters); the
    dead-letter topic is always ``PASSERELLE_DEAD_LETTER_TOPIC``.
    """
    from passerelle.streams.remarketing.config import RemarketingConfig, RemarketingTopics
    from passerelle.streams.runtime.deadletter import ErrorBudget

    check_settings(settings)
    topics = dataclasses.replace(topics or RemarketingTopics(), dead_letters=settings.dead_letter_topic)
    return RemarketingConfig(
        bootstrap_servers=settings.bootstrap_servers,
        schema_registry_url=settings.schema_registry_url,
        app_id=app_id,
        instance_id=settings.instance_id,
        topics=topics,
        sequencer=settings.to_config(),
        tick_ms=max(1, round(settings.remarketing_tick_seconds * 1000)),
        commit_interval_ms=settings.commit_interval_ms,
        batch_size=settings.batch_size,
        error_budget=ErrorBudget(max_ratio=settings.max_error_ratio),
        auto_register_schemas=False,
        data_dir=str(settings.state_dir / "remarketing" / f"{app_id}-{settings.instance_id}"),
        metrics_port=settings.metrics_port,
        connection=settings.connection(),
    )


def _remarketing(args: argparse.Namespace) -> int:
    try:
        from passerelle.streams.remarketing.worker import run
    except ImportError as exc:  # faust is an optional extra
        raise PasserelleError(f"faust-streaming is not installed ({exc}); pip install 'passerelle[faust]'") from exc

    settings = load(RemarketingSettings)
    assert isinstance(settings, RemarketingSettings)
    run(remarketing_config(settings, args.app_id))
    return 0


def _epilog(width: int) -> str:
    from passerelle.commands.processor import settings_epilog

    return "\n".join(
        [
            settings_epilog(RemarketingSettings, width),
            "",
            *textwrap.wrap(
                "Here the runtime's settings mean: PASSERELLE_PROCESSING_GUARANTEE at_least_once only (unset: "
                "at_least_once; exactly_once is refused), PASSERELLE_MIN_COMMIT_INTERVAL_MS refused, "
                "PASSERELLE_INSTANCE_ID names the instance's clients and data folder.",
                width,
            ),
        ]
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``remarketing``."""
    width = max(shutil.get_terminal_size().columns - 2, 60)
    p = sub.add_parser(
        "remarketing",
        help="run the remarketing sequencer: carts.abandoned -> remarketing.messages (step 1, step 2)",
        description=textwrap.fill(
            "On each abandoned cart of an identified customer with an email and marketing consent, emit step 1 "
            "(viewed products, cart lines); after the follow-up delay emit step 2 with the promotion unless the "
            "customer ordered. An order, a consent withdrawal or an erasure cancels what remains; at most one "
            "sequence per customer per cap window. Runs on faust-streaming (tables + timers), at least once.",
            width,
        ),
        epilog=_epilog(width),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--app-id", default=DEFAULT_APP_ID, help="faust app id (consumer group and internal topic prefix)")
    p.set_defaults(func=_remarketing)
