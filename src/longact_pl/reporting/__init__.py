"""Ablation reports over a Hydra multirun: collect runs, reduce over seeds, write markdown and PNGs."""

from longact_pl.reporting.build import Report, build_report

__all__ = ["Report", "build_report"]
