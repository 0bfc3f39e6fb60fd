"""Per-processor settings: their units, the runner configuration, a shared environment, the generated help."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from passerelle.commands import processor as command
from passerelle.errors import PasserelleError
from passerelle.schemas.catalog import load_catalog
from passerelle.settings import (
    CartSettings,
    EnrichmentSettings,
    PasserelleSettings,
    ProcessorSettings,
    RemarketingSettings,
    load,
)

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No PASSERELLE_* variable of the calling shell leaks into these tests."""
    for key in list(os.environ):
        if key.upper().startswith("PASSERELLE_"):
            monkeypatch.delenv(key)


def test_enrichment_settings_count_in_milliseconds() -> None:
    settings = EnrichmentSettings(
        visit_timeout_minutes=45, campaign_lifetime_days=2, attribution_precedence="utm, xtor"
    )
    config = settings.to_config()
    assert config.visit_timeout_ms == 45 * 60_000
    assert config.campaign_lifetime_ms == 2 * 86_400_000
    assert config.attribution.precedence == ("utm", "xtor")


def test_enrichment_defaults_are_the_enricher_defaults() -> None:
    from passerelle.streams.enrichment.enricher import EnrichmentConfig

    config, default = EnrichmentSettings().to_config(), EnrichmentConfig()
    assert config.visit_timeout_ms == default.visit_timeout_ms
    assert config.campaign_lifetime_ms == default.campaign_lifetime_ms
    assert config.attribution == default.attribution


def test_unknown_attribution_family_is_refused() -> None:
    with pytest.raises(ValueError, match="nope"):
        EnrichmentSettings(attribution_precedence="utm,nope").to_config()


def test_cart_settings_count_in_milliseconds() -> None:
    assert CartSettings(cart_abandon_minutes=1.5).to_config().abandon_after_ms == 90_000
    assert CartSettings().to_config().abandon_after_ms == 30 * 60_000


def test_remarketing_settings_count_in_milliseconds() -> None:
    settings = RemarketingSettings(
        remarketing_followup_hours=2,
        remarketing_cap_days=0.5,
        remarketing_promo_code="HELLO5",
        remarketing_promo_description="5% off",
        remarketing_promo_discount=None,
    )
    config = settings.to_config()
    assert config.followup_ms == 2 * 3_600_000
    assert config.cap_ms == 12 * 3_600_000
    assert (config.promotion.code, config.promotion.description, config.promotion.discount_percent) == (
        "HELLO5",
        "5% off",
        None,
    )
    default = RemarketingSettings().to_config()
    assert (default.followup_ms, default.cap_ms) == (24 * 3_600_000, 7 * 24 * 3_600_000)


def test_remarketing_tick_must_be_positive() -> None:
    assert RemarketingSettings().remarketing_tick_seconds == 60
    assert RemarketingSettings(remarketing_tick_seconds=0.5).remarketing_tick_seconds == 0.5
    with pytest.raises(ValidationError):
        RemarketingSettings(remarketing_tick_seconds=0)


def test_runtime_settings_keep_only_the_runtime_fields() -> None:
    own = set(command.own_fields(ProcessorSettings, PasserelleSettings))
    assert own == {
        "instance_id",
        "processing_guarantee",
        "commit_interval_ms",
        "min_commit_interval_ms",
        "batch_size",
        "metrics_port",
        "dead_letter_topic",
        "max_error_ratio",
        "state_store",
        "state_store_dir",
    }
    assert "cart_abandon_minutes" not in EnrichmentSettings.model_fields
    assert "visit_timeout_minutes" not in CartSettings.model_fields


def test_runner_config_takes_the_schemas_from_the_catalog() -> None:
    from passerelle.streams.enrichment.processor import EnrichmentProcessor

    catalog = load_catalog()
    processor = EnrichmentProcessor()
    settings = EnrichmentSettings(
        bootstrap_servers="broker:9092",
        schema_registry_url="http://registry:8081",
        instance_id="7",
        processing_guarantee="at_least_once",
        commit_interval_ms=250,
        min_commit_interval_ms=0,
        batch_size=10,
        metrics_port=9400,
        dead_letter_topic="dlq",
        max_error_ratio=0.25,
    )
    config = settings.runner_config("app-1", processor, catalog)
    assert dict(config.input_schemas) == {"hits.raw": catalog.schema_text("Hit")}
    assert dict(config.output_schemas) == {
        "hits.enriched": catalog.schema_text("EnrichedHit"),
        "identity.links": catalog.schema_text("IdentityLink"),
        "campaigns.undeclared": catalog.schema_text(catalog.topic("campaigns.undeclared").value_schema),
    }
    assert (config.app_id, config.bootstrap_servers, config.schema_registry_url) == (
        "app-1",
        "broker:9092",
        "http://registry:8081",
    )
    assert (config.instance_id, config.exactly_once, config.commit_interval_ms, config.min_commit_interval_ms) == (
        "7",
        False,
        250,
        0,
    )
    assert (config.batch_size, config.metrics_port, config.dead_letter_topic) == (10, 9400, "dlq")
    assert config.error_budget.max_ratio == 0.25
    assert config.auto_register_schemas is False  # schemas are registered by `passerelle schemas register`
    assert config.connection is not None and config.connection.bootstrap_servers == "broker:9092"
    assert ProcessorSettings().runner_config("a", processor, catalog).exactly_once is True


def test_runner_config_of_the_cart_tracker() -> None:
    from passerelle.streams.carts.processor import CartTrackerProcessor

    catalog = load_catalog()
    config = CartSettings().runner_config("carts", CartTrackerProcessor(), catalog)
    assert dict(config.input_schemas) == {"hits.enriched": catalog.schema_text("EnrichedHit")}
    assert dict(config.output_schemas) == {"carts.abandoned": catalog.schema_text("CartAbandoned")}


def test_a_shared_environment_serves_every_processor(monkeypatch: pytest.MonkeyPatch) -> None:
    """One environment (a .env, a ConfigMap) may hold every processor's variables; each reads its own."""
    monkeypatch.setenv("PASSERELLE_VISIT_TIMEOUT_MINUTES", "10")
    monkeypatch.setenv("PASSERELLE_CART_ABANDON_MINUTES", "5")
    monkeypatch.setenv("PASSERELLE_REMARKETING_TICK_SECONDS", "2")
    monkeypatch.setenv("PASSERELLE_COMMIT_INTERVAL_MS", "300")
    enrich = load(EnrichmentSettings)
    assert isinstance(enrich, EnrichmentSettings)
    assert enrich.visit_timeout_minutes == 10 and enrich.commit_interval_ms == 300
    carts = load(CartSettings)
    assert isinstance(carts, CartSettings)
    assert carts.cart_abandon_minutes == 5 and carts.commit_interval_ms == 300
    remarketing = load(RemarketingSettings)
    assert isinstance(remarketing, RemarketingSettings)
    assert remarketing.remarketing_tick_seconds == 2
    assert isinstance(load(ProcessorSettings), ProcessorSettings)


def test_an_unknown_variable_is_still_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PASSERELLE_CART_ABANDON_MINUTE", "5")  # typo
    with pytest.raises(PasserelleError, match="PASSERELLE_CART_ABANDON_MINUTE"):
        load(EnrichmentSettings)
    with pytest.raises(PasserelleError, match="PASSERELLE_CART_ABANDON_MINUTE"):
        load(CartSettings)


def test_an_invalid_value_of_its_own_variable_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PASSERELLE_VISIT_TIMEOUT_MINUTES", "0")
    with pytest.raises(PasserelleError, match="visit_timeout_minutes") as err:
        load(EnrichmentSettings)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("settings_cls", [ProcessorSettings, EnrichmentSettings, CartSettings, RemarketingSettings])
def test_the_epilog_lists_every_variable_with_its_default(settings_cls: type[ProcessorSettings]) -> None:
    epilog = command.settings_epilog(settings_cls, width=100)
    for name, field in command.own_fields(settings_cls, PasserelleSettings).items():
        line = next(line for line in epilog.splitlines() if f"PASSERELLE_{name.upper()} " in line)
        default = field.get_default(call_default_factory=True)
        if default is not None:
            assert str(default).removesuffix(".0") in line
    runtime = epilog.index("PASSERELLE_INSTANCE_ID")
    for name in command.own_fields(settings_cls, ProcessorSettings):
        assert epilog.index(f"PASSERELLE_{name.upper()}") < runtime  # the processor's own come first


def help_text(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    proc = subprocess.run(
        [sys.executable, "-m", "passerelle", *args, "--help"],
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "100"},
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize(
    ("name", "own"),
    [("enrich", "PASSERELLE_VISIT_TIMEOUT_MINUTES"), ("carts", "PASSERELLE_CART_ABANDON_MINUTES")],
)
def test_help_lists_the_processor_and_runtime_variables(name: str, own: str) -> None:
    out = help_text(name)
    assert f"{own} (default: 30)" in out
    assert "PASSERELLE_COMMIT_INTERVAL_MS (default: 100)" in out
    assert "PASSERELLE_INSTANCE_ID (default: 0)" in out
    assert "--app-id" in out


def test_help_does_not_load_the_runtime() -> None:
    code = (
        "import sys\nfrom passerelle.cli import build_parser\nbuild_parser()\n"
        "print(sorted(m for m in sys.modules if m.startswith('passerelle.streams')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("argv", "settings_cls", "what", "app_id"),
    [
        (["enrich"], EnrichmentSettings, "enrichment", "passerelle-enrichment"),
        (["carts", "--app-id", "carts-b"], CartSettings, "cart tracker", "carts-b"),
    ],
)
def test_commands_build_their_processor_and_run_it(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], settings_cls: type[ProcessorSettings], what: str, app_id: str
) -> None:
    from passerelle.cli import build_parser
    from passerelle.streams.runtime import Processor

    seen: list[tuple[Any, ...]] = []
    monkeypatch.setattr(command, "run_processor", lambda *a: seen.append(a) or 0)
    monkeypatch.setenv("PASSERELLE_INSTANCE_ID", "3")
    args = build_parser().parse_args(argv)
    assert args.func(args) == 0
    [(settings, processor, got_app_id, got_what)] = seen
    assert type(settings) is settings_cls and settings.instance_id == "3"
    assert isinstance(processor, Processor)
    assert (got_app_id, got_what) == (app_id, what)
