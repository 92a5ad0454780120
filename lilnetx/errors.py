"""The root of every error lilnetx raises on purpose: ``except lilnetx.LilnetxError`` catches them all."""

from __future__ import annotations


class LilnetxError(Exception):
    """Base class of lilnetx's errors; each message names the problem and the fix."""
