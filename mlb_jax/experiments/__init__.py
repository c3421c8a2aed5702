"""Multi-run experiments: seeds/folds (`runner`), mean ± std tables (`aggregate`), searches (`sweep`).

Command line: `python -m mlb_jax.experiments --help` (see `__main__`).
"""
