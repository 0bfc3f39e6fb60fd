"""Data-driven attribution: first-order Markov chain, removal effect (Anderl et al. 2016). Pure, no I/O.

Computed over the paths of a period (converting AND non-converting), not per event. The method, its formula and
its limits are in ``docs/attribution.md``; in short:

- States: ``start``, one per channel, ``conversion`` and ``null`` (absorbing). A path ``(c1, ..., ck)`` counts
  the transitions start->c1, c1->c2, ..., ck->conversion if it converted, ck->null if not. A path without any
  channel is ignored (there is no channel to credit). The transition probability s->t is count(s->t) divided by
  the count of all transitions out of s.
- Consecutive repeats of a channel (``email, email``) are KEPT, as self-loops. A self-loop does not change where
  the chain is absorbed (leaving c, the other transitions keep their relative weights), so collapsing repeats
  gives the same conversion probability and removal effects; the tests check it.
- ``P`` = probability of absorption in ``conversion`` from ``start``. Removing channel c sends every transition
  into c to ``null``: ``P_-c``. Removal effect ``RE(c) = 1 - P_-c / P``; credits = removal effects normalised to
  sum 1.
- Solved exactly: with N = (I - Q)^-1 the fundamental matrix over the transient states and x the absorption
  probabilities in ``conversion`` (x = N b), a walk from start converts either avoiding c or after reaching c,
  and it reaches c with probability N[start, c] / N[c, c], so ``P - P_-c = N[start, c] / N[c, c] * x[c]``: one
  inversion for all channels. The arithmetic is exact (``fractions.Fraction``) up to ``EXACT_CHANNELS``
  channels, floating point (Gauss-Jordan with partial pivoting) beyond.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fractions import Fraction
from typing import Final, TypeVar

EXACT_CHANNELS: Final = 32  # up to this many channels, exact rational arithmetic; floats beyond

_N = TypeVar("_N", Fraction, float)


def removal_effects(paths: Iterable[tuple[Sequence[str], bool]]) -> dict[str, float]:
    """Channel -> removal effect ``1 - P(without the channel) / P``, in [0, 1], for every channel on the paths.

    ``paths``: (channels in order, converted?) per path. ``{}`` when no path converted (P = 0). A channel whose
    removal does not change P (seen only on paths that do not lead to a conversion) has 0.
    """
    index: dict[str, int] = {}  # channel -> state 1..k; state 0 is start
    counts: list[dict[int, int]] = [{}]  # transient state -> next state -> count; CONVERSION / NULL keys below
    for channels, converted in paths:
        if not channels:
            continue
        state = 0
        for channel in channels:
            nxt = index.get(channel)
            if nxt is None:
                nxt = index[channel] = len(counts)
                counts.append({})
            counts[state][nxt] = counts[state].get(nxt, 0) + 1
            state = nxt
        end = _CONVERSION if converted else _NULL
        counts[state][end] = counts[state].get(end, 0) + 1
    if not any(_CONVERSION in out for out in counts):
        return {}
    effects = _effects(counts, Fraction) if len(index) <= EXACT_CHANNELS else _effects(counts, float)
    return {channel: min(1.0, max(0.0, effects[i])) for channel, i in index.items()}


def markov_credits(paths: Iterable[tuple[Sequence[str], bool]], conversions_total: float) -> dict[str, float]:
    """Channel -> conversions attributed to it: ``conversions_total`` shared in proportion to the removal effects
    (the credits, normalised to sum 1, times ``conversions_total``). ``{}`` when no path converted."""
    if not conversions_total >= 0 or conversions_total == float("inf"):
        raise ValueError(f"conversions_total must be a finite number >= 0, got {conversions_total!r}")
    effects = removal_effects(paths)
    total = sum(effects.values())
    if total <= 0:  # cannot happen when a path converted: its last channel has a positive removal effect
        return {}
    return {channel: effect / total * conversions_total for channel, effect in effects.items()}


_CONVERSION: Final = -1
_NULL: Final = -2


def _effects(counts: list[dict[int, int]], kind: type[_N]) -> list[float]:
    """Removal effect per transient state ([0] is start's, unused): (P - P_-c) / P, computed in ``kind``."""
    n = len(counts)
    a: list[list[_N]] = [[kind(0)] * n for _ in range(n)]  # I - Q
    b: list[_N] = [kind(0)] * n  # one-step probability of conversion
    for s, out in enumerate(counts):
        a[s][s] = kind(1)
        total = sum(out.values())
        for t, count in out.items():
            p = kind(count) / total
            if t == _CONVERSION:
                b[s] = p
            elif t >= 0:
                a[s][t] -= p
    inverse = _invert(a, kind)
    x = [sum((inverse[s][t] * b[t] for t in range(n)), kind(0)) for s in range(n)]
    p = x[0]  # > 0: the caller checked that some path converted
    return [1.0] + [float(inverse[0][c] / inverse[c][c] * x[c] / p) for c in range(1, n)]


def _invert(a: list[list[_N]], kind: type[_N]) -> list[list[_N]]:
    """Gauss-Jordan inverse with partial pivoting (I - Q is a non-singular M-matrix: every state is transient)."""
    n = len(a)
    m = [row[:] + [kind(1) if i == j else kind(0) for j in range(n)] for i, row in enumerate(a)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        m[col], m[pivot] = m[pivot], m[col]
        head = m[col]
        inv = 1 / head[col]
        for j in range(col, 2 * n):
            head[j] *= inv
        for r in range(n):
            if r == col:
                continue
            row = m[r]
            factor = row[col]
            if factor:
                for j in range(col, 2 * n):
                    if head[j]:
                        row[j] -= factor * head[j]
    return [row[n:] for row in m]
