"""``passerelle remarketing``: run the two-step remarketing sequencer (faust-streaming)."""

from __future__ import annotations

import argparse

from passerelle.errors import PasserelleError
from passerelle.settings import RemarketingSettings, load


def _remarketing(args: argparse.Namespace) -> int:
    try:
        from streams.remarketing.app import RemarketingConfig, run
    except ImportError as exc:  # faust is an optional extra
        raise PasserelleError(f"faust-streaming is not installed ({exc}); pip install 'passerelle[faust]'") from exc
    from streams.remarketing.sequence import Promotion, SequencerConfig

    settings = load(RemarketingSettings)
    assert isinstance(settings, RemarketingSettings)
    hour = 3_600_000
    config = RemarketingConfig(
        bootstrap_servers=settings.bootstrap_servers,
        schema_registry_url=settings.schema_registry_url,
        app_id=args.app_id,
        sequencer=SequencerConfig(
            followup_ms=int(settings.remarketing_followup_hours * hour),
            cap_ms=int(settings.remarketing_cap_days * 24 * hour),
            promotion=Promotion(
                settings.remarketing_promo_code,
                settings.remarketing_promo_description,
                settings.remarketing_promo_discount,
            ),
        ),
        tick_seconds=args.tick_seconds,
        auto_register_schemas=False,
        data_dir=str(settings.state_dir / "remarketing"),
        metrics_port=settings.metrics_port,
        connection=settings.connection(),
    )
    run(config)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``remarketing``."""
    p = sub.add_parser(
        "remarketing",
        help="run the remarketing sequencer: carts.abandoned -> remarketing.messages (step 1, step 2)",
        description="On each abandoned cart of an identified customer with an email and marketing consent, emit "
        "step 1 (viewed products, cart lines); after the follow-up delay emit step 2 with the promotion unless "
        "the customer ordered. An order, a consent withdrawal or an erasure cancels what remains; at most one "
        "sequence per customer per cap window. Runs on faust-streaming (tables + timers).",
        epilog="Settings: PASSERELLE_REMARKETING_FOLLOWUP_HOURS, PASSERELLE_REMARKETING_CAP_DAYS, "
        "PASSERELLE_REMARKETING_PROMO_CODE / _DESCRIPTION / _DISCOUNT, PASSERELLE_METRICS_PORT.",
    )
    p.add_argument("--app-id", default="passerelle-remarketing", help="faust app id (group and table prefix)")
    p.add_argument("--tick-seconds", type=float, default=60.0, help="how often due step 2 messages are looked for")
    p.set_defaults(func=_remarketing)
