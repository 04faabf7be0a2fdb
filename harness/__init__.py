"""Hydra entry points of the CLEANER harness: train, sweep, eval and search, with run records named by config
hash. The library (`cleaner`) never imports Hydra; these modules turn configs into the library's plain
dataclasses."""
