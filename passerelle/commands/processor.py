"""What every runtime-based processor command shares: its sub-command, its help, building and running its runner.

A processor command is a settings class (``passerelle.settings.ProcessorSettings``
or a subclass holding the processor's own rules) and a function building the
processor from those settings. ``add_processor_parser`` registers it, with an
epilog generated from the settings class so ``--help`` always lists the
variables the code reads; ``run_processor`` runs it.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import textwrap
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic.fields import FieldInfo

from passerelle.schemas.catalog import load_catalog
from passerelle.settings import ENV_PREFIX, PasserelleSettings, ProcessorSettings, load

if TYPE_CHECKING:  # the runtime (confluent-kafka) loads only when a processor runs, not for --help
    from passerelle.streams.runtime import Processor

log = logging.getLogger(__name__)

S = TypeVar("S", bound=ProcessorSettings)


def run_processor(settings: ProcessorSettings, processor: Processor, app_id: str, what: str) -> int:
    """Run ``processor`` on the runtime until SIGTERM/SIGINT; ``what`` names it in the log line."""
    from passerelle.streams.runtime import Runner

    catalog = load_catalog(settings.catalog)
    runner = Runner(processor, settings.runner_config(app_id, processor, catalog), state=settings.state_config())
    runner.install_signal_handlers()
    log.info("%s running as %s/%s (%s)", what, app_id, settings.instance_id, settings.processing_guarantee)
    runner.run()
    return 0


def _default(field: FieldInfo) -> str:
    value: Any = field.get_default(call_default_factory=True)
    if value is None:
        return "none"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def own_fields(cls: type[PasserelleSettings], base: type[PasserelleSettings]) -> dict[str, FieldInfo]:
    """Fields ``cls`` declares beyond those of ``base``, in declaration order."""
    return {name: f for name, f in cls.model_fields.items() if name not in base.model_fields}


def _variables(fields: dict[str, FieldInfo], width: int) -> list[str]:
    lines: list[str] = []
    for name, field in fields.items():
        text = f"{ENV_PREFIX}{name.upper()} (default: {_default(field)})"
        if field.description:
            text += f": {field.description}"
        lines += textwrap.wrap(
            text, width, initial_indent="  ", subsequent_indent="      ", break_long_words=False, break_on_hyphens=False
        )
    return lines


def settings_epilog(settings_cls: type[ProcessorSettings], width: int | None = None) -> str:
    """The ``--help`` epilog of a processor command, generated from its settings class.

    The class's own variables first, then the runtime's (``ProcessorSettings``),
    one per line with their default and description.
    """
    width = width or max(shutil.get_terminal_size().columns - 2, 60)
    lines: list[str] = []
    own = own_fields(settings_cls, ProcessorSettings)
    if own:
        lines += ["settings (environment variables):", *_variables(own, width), ""]
    lines.append("and the runtime settings:" if own else "settings (environment variables), the runtime's:")
    runtime = own_fields(ProcessorSettings, PasserelleSettings)
    lines += _variables({name: settings_cls.model_fields[name] for name in runtime}, width)  # the class's defaults
    lines.append("")
    lines += textwrap.wrap(
        "Kafka, registry and credentials as for every command (PASSERELLE_BOOTSTRAP_SERVERS, "
        "PASSERELLE_SCHEMA_REGISTRY_URL, ...; see the README). Topics and schemas must exist "
        "(`passerelle topics create`, `passerelle schemas register`).",
        width,
    )
    return "\n".join(lines)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the generated epilog's lines; the description is wrapped beforehand (see ``add_processor_parser``)."""


def add_processor_parser(
    sub: argparse._SubParsersAction,
    name: str,
    *,
    help: str,
    description: str,
    settings_cls: type[S],
    default_app_id: str,
    build: Callable[[S], Processor],
    what: str | None = None,
) -> argparse.ArgumentParser:
    """Register the processor command ``name``: ``--app-id``, generated settings help, load → build → run.

    ``build`` receives the loaded settings and returns the processor (its
    modules imported inside it, so ``--help`` stays light); ``what`` names the
    processor in the start-up log line (default: ``name``).
    """
    width = max(shutil.get_terminal_size().columns - 2, 60)
    p = sub.add_parser(
        name,
        help=help,
        description=textwrap.fill(description, width),
        epilog=settings_epilog(settings_cls, width),
        formatter_class=_Formatter,
    )
    p.add_argument("--app-id", default=default_app_id, help="consumer group and changelog prefix")

    def _run(args: argparse.Namespace) -> int:
        settings = load(settings_cls)
        assert isinstance(settings, settings_cls)
        return run_processor(settings, build(settings), args.app_id, what or name)

    p.set_defaults(func=_run)
    return p
