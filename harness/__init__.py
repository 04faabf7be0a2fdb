"""Hydra entry points of the CLEANER harness: train, eval, sweep, report. The library (`cleaner`) never imports
Hydra; these modules turn configs into the library's plain dataclasses."""
