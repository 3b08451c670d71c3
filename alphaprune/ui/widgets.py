"""Streamlit widgets generated from the registry's parameter specs (alphaprune/registry.py).

A rule's or pruner's parameter is drawn from its spec alone: a slider over its range for a
number, a selectbox for a choice, a text box of comma-separated numbers for a list (parsed and
checked as the CLI does), so the app shows the same defaults and ranges as the CLI's --help.
The key is `prefix + name` (e.g. "alloc_epsilon").

    value = param_widget(st, registry.param("epsilon"), current=0.3, prefix="alloc_")
    values = param_widgets(registry.rule("owl").params, current={"owl_m": 5.0}, prefix="alloc_")
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from alphaprune.errors import UserError
from alphaprune.registry import AUTO, Param


def param_widget(container, spec: Param, current: Any, prefix: str, options: tuple = (), auto: bool = False) -> Any:
    """One parameter's widget; `current` its value now (None: the spec's default). A text
    parameter with `options` is a selectbox of them. With `auto` and a parameter that may be
    searched, a checkbox "auto" beside it: then the value is "auto" (chosen by the run's
    search on held-out calibration text, alphaprune/tune.py)."""
    value = spec.default if current is None or current == AUTO else current
    key, helptext = prefix + spec.name, f"{spec.help}; {spec.range_text}; default {spec.default}"
    if auto and spec.auto and container.checkbox(f"{spec.label}: auto", current == AUTO, key=key + "_auto"):
        return AUTO
    if spec.kind == "floats":
        return _numbers(container, spec, value, key, helptext)
    if spec.kind == "choice" or (spec.kind == "text" and options):
        choices = list(spec.choices or options)
        index = choices.index(value) if value in choices else 0
        return container.selectbox(spec.label, choices, index=index, key=key, help=helptext)
    if spec.kind in ("float", "int") and spec.low is not None and spec.high is not None:
        step = spec.step or (1 if spec.kind == "int" else (spec.high - spec.low) / 100)
        low, high = (int(spec.low), int(spec.high)) if spec.kind == "int" else (float(spec.low), float(spec.high))
        if spec.low_open:  # the bound itself is invalid (a ceiling of 0): the slider starts a step above
            low += step
        return container.slider(spec.label, low, high, value, step, key=key, help=helptext)
    if spec.kind in ("float", "int"):
        return container.number_input(spec.label, value=value, key=key, help=helptext)
    return container.text_input(spec.label, value=str(value), key=key, help=helptext)


def param_widgets(specs: tuple[Param, ...], current: dict, prefix: str, options: dict | None = None,
                  auto: bool = False) -> dict:  # fmt: skip
    """The widgets of several parameters side by side; their values by name."""
    if not specs:
        return {}
    columns = st.columns(len(specs))
    options = options or {}
    return {
        s.name: param_widget(col, s, current.get(s.name), prefix, options.get(s.name, ()), auto)
        for col, s in zip(columns, specs, strict=True)
    }


def _numbers(container, spec: Param, value, key: str, helptext: str):
    """A list parameter typed as comma-separated numbers; what was typed, parsed and checked as
    on the CLI, or the previous value (None when there is none) with the one-line reason."""
    typed = container.text_input(spec.label, ", ".join(f"{x:g}" for x in value or ()), key=key, help=helptext)
    try:
        return spec.check(spec.parse(typed.strip()))
    except UserError as exc:
        container.error(exc.render("app"))
        return value
