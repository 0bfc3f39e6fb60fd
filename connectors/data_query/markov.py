"""The data-driven (Markov removal-effect) attribution as a :class:`Result`, from the analytics store.

``passerelle attribution markov`` publishes one run per period label on
``attribution.markov``; the warehouse sink keeps the latest run of each label
in ``markov_credits``. This reads one label back (or the most recently
computed run) so the API and the CLI serve it in every export format, like a
query. It is not a metric of the query model: its credits belong to the run's
period as a whole, not to days that a query period could cut.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from passerelle.connectors.data_query.result import Column, Period, Result
from passerelle.connectors.warehouse.store import Store

COLUMNS = (
    Column("channel", "dimension", "text", "Channel"),
    Column("removal_effect", "metric", "percent", "Removal effect"),
    Column("credit", "metric", "percent", "Credit"),
    Column("conversions", "metric", "float", "Attributed conversions"),
)


class NoRunError(LookupError):
    """No Markov run in the store (for this label): the job has not run, or the sink has not read it yet."""


def labels(store: Store) -> list[dict[str, Any]]:
    """Every period label in the store with when its latest run was computed, newest first."""
    with store.connect() as conn:
        rows = conn.execute(
            "SELECT period, MIN(period_start), MIN(period_end), MIN(computed_at), MIN(journeys), "
            "MIN(period_conversions) FROM markov_credits GROUP BY period ORDER BY MIN(computed_at) DESC, period"
        ).fetchall()
        if store.dialect == "postgres":
            conn.commit()
    return [
        {"period": r[0], "period_start": r[1], "period_end": r[2], "computed_at": r[3], "journeys": int(r[4]),
         "conversions": int(r[5])}
        for r in rows
    ]  # fmt: skip


def latest(store: Store, label: str | None = None) -> Result:
    """The run of ``label`` (or the most recently computed one), its channels by credit, highest first."""
    known = labels(store)
    if not known:
        raise NoRunError("no Markov attribution in the store yet: run `passerelle attribution markov` first")
    run = next((k for k in known if k["period"] == label), None) if label else known[0]
    if run is None:
        names = ", ".join(sorted(k["period"] for k in known))
        raise NoRunError(f"no Markov attribution for period {label!r}; the store has: {names}")
    with store.connect() as conn:
        rows = conn.execute(
            "SELECT channel, removal_effect, credit, conversions FROM markov_credits "
            f"WHERE period = {store.param} ORDER BY credit DESC, channel",
            [run["period"]],
        ).fetchall()
        if store.dialect == "postgres":
            conn.commit()
    start, end = run["period_start"], run["period_end"]
    period = Period(start.astimezone(UTC).date(), end.astimezone(UTC).date(), run["period"])
    echo = {"model": "markov", "period": run["period"], "computed_at": run["computed_at"].isoformat(),
            "journeys": run["journeys"], "conversions": run["conversions"]}  # fmt: skip
    return Result(COLUMNS, iter([tuple(r) for r in rows]), period, query=echo, total_rows=len(rows))
