"""Diagnostic callbacks: what a run applied, written to files for comparison across runs."""

from longact_pl.diagnostics.grad_dump import GradDump

__all__ = ["GradDump"]
