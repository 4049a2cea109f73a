"""ALAE training: the three-step update, R1, progressive growing, EMA and DDP; writes alae-rt checkpoints.

Installed as `alae_rt.training`: alae_rt/training is a link to this folder (pyproject.toml lists the package).
"""
