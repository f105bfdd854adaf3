"""A set a method optimises is never the set it is judged on.

Selection targets are the subsets a method aims its selection at (``subsets.pds_target``: PDS's J,
the bake-off's MATES reference and LESS target). Evaluation targets are ``eval.targets`` and the
leaderboard's primary metric. Splits are drawn per document at ingest, so two subsets with no
split in common share no document (and no example); two that share a split can, unless their
domain lists are disjoint. This module finds those conflicts from the config alone, so a run that
would judge a method on its own target fails before any job starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# The subsets the workflow's selection methods optimise (by config key).
SELECTION_TARGETS = ("pds_target",)


def may_share_documents(a: Mapping, b: Mapping) -> list[str]:
    """Why two subset specs ``{splits, domains, ...}`` can share documents; [] when they cannot.

    An empty or missing ``splits``/``domains`` list means every split/domain.
    """
    splits_a, splits_b = set(a.get("splits") or []), set(b.get("splits") or [])
    doms_a, doms_b = set(a.get("domains") or []), set(b.get("domains") or [])
    splits = (splits_a & splits_b) if splits_a and splits_b else (splits_a or splits_b or {"(any)"})
    doms = (doms_a & doms_b) if doms_a and doms_b else (doms_a or doms_b or {"(any)"})
    if not splits or not doms:
        return []
    return [f"split {', '.join(sorted(splits))}", f"domain {', '.join(sorted(doms))}"]


def heldout_problems(config: Mapping) -> list[str]:
    """Every evaluation target that may overlap a selection target, naming both config keys."""
    subsets = config.get("subsets", {})
    selection = [s for s in SELECTION_TARGETS if s in subsets]
    evaluated: list[tuple[str, str]] = [(f"eval.targets ({t})", t) for t in config.get("eval", {}).get("targets", [])]
    primary = (config.get("bakeoff") or {}).get("primary")
    methods: Sequence[str] = config.get("methods", [])
    if "bakeoff" in methods and isinstance(primary, str) and primary.startswith("target/"):
        evaluated.append(("bakeoff.primary", primary.removeprefix("target/")))
    problems = []
    for key, name in evaluated:
        for sel in selection:
            if name == sel:
                problems.append(
                    f"config key {key} is subsets.{sel}, the set selection optimises: judge on a held-out"
                    f" twin (same domains, another split, e.g. subsets.{sel}_eval with splits [test])"
                )
                continue
            if name not in subsets:
                continue  # named-key errors for unknown subsets are raised elsewhere
            why = may_share_documents(subsets[name], subsets[sel])
            if why:
                problems.append(
                    f"config key {key} (subsets.{name}) may share documents with subsets.{sel}, the set"
                    f" selection optimises: both draw from {' and '.join(why)}; give subsets.{name} splits"
                    f" that subsets.{sel} does not use"
                )
    return problems
