"""Pieces the runnable configs of `configs/` are built from (none of these is a config itself).

* `base`: every field with its default and its documentation;
* `datasets`: the data sections of the real datasets;
* `paper`: the authors' ResNet-18 training setup and seeds;
* `released`: the authors' released hyperparameters per dataset and method.
"""
