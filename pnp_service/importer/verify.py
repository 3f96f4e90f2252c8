"""Checking imported declarations as ``pnp-service check`` checks a file: against the YANG with libyang
(:func:`pnp_service.validation.load`) and planned (:func:`pnp_service.planner.plan`), every problem named by
file and line."""

from __future__ import annotations

from dataclasses import replace
from typing import Collection, Mapping, Sequence

from .. import validation
from ..planner import PlanningError, TemplateLoader, plan
from .lists import ImportFailed, Imported, Problem, yang_problems
from .output import declarations_document


# --------------------------------------------------------------------------- checking the result


def verify(imported: Sequence[Imported], source: str, load_template: TemplateLoader,
           known_step_types: Collection[str] | None = None, context: Mapping[str, object] | None = None) -> None:
    """Check the declarations as ``pnp-service check`` does: the YANG (libyang), then planning each one.

    libyang's messages are about the generated file: each is told at the place the device was written
    (``source`` when no device is named).
    """
    where = {item.key: item.where for item in imported}
    try:
        validation.load(declarations_document([item.declaration for item in imported]), source)
    except validation.DeclarationsError as exc:
        raise yang_problems(exc, where, source, lines=False) from None
    failed = []
    for item in imported:
        try:
            # A location's declaration is rendered with a stand-in serial, as check does (the switch's is not known).
            declaration = item.declaration if item.declaration.serial else replace(item.declaration, serial="LOCATION0")
            plan(declaration, load_template, known_step_types, context)
        except PlanningError as exc:
            message = str(exc)
            for name in ("hostname", "pid"):  # built in, not a variable: say which field gives it
                message = message.replace(f"variable '{name}' is undefined (declare it under variable)",
                                          f"variable '{name}' is undefined (give the device a {name})")
            failed.append(Problem(item.where, message))
    if failed:
        raise ImportFailed(failed)


