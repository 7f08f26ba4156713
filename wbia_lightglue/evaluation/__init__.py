"""Evaluation: the 1-vs-all protocol, dataset runs and their reports, plots, match drawings, calibration."""
