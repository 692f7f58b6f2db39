"""Option types shared by the commands."""

from __future__ import annotations

import click

from tagger.units import format_duration, parse_duration


def duration(at_least: float | None = None):
    """A click callback parsing ``500ms``, ``2s``, ``1m`` into seconds: positive,
    and at least ``at_least`` when given; ``None`` passes through (an unset option)."""

    def callback(ctx, param, value):
        if value is None:
            return None
        try:
            seconds = parse_duration(value)
        except ValueError as err:
            raise click.BadParameter(str(err)) from None
        if seconds <= 0:
            raise click.BadParameter("must be positive")
        if at_least is not None and seconds < at_least:
            raise click.BadParameter(f"must be at least {format_duration(at_least)}")
        return seconds

    return callback
