"""ALAE training: the three-step update, R1, progressive growing, EMA and DDP; writes alae-rt checkpoints.

The top-level `training/` folder is a link to this one (pyproject.toml lists the package).
"""
