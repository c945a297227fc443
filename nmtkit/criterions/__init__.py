"""Criterion registry; built-in criterions register through the imports below."""

from __future__ import annotations

from nmtkit.criterions.base import CRITERIONS, Criterion, register_criterion

__all__ = ["CRITERIONS", "Criterion", "register_criterion"]
