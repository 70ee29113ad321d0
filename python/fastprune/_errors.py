"""Exceptions shared by the package and its compiled core's loader."""

from __future__ import annotations


class SetupError(ImportError):
    """An environment setting (``FASTPRUNE_ISA``, ``FASTPRUNE_DISABLE_ISA``, ``FASTPRUNE_BLAS``)
    that this machine or this build cannot honour, or no compiled level that can run here: raised
    as it is, with the reason, rather than as a broken installation."""
