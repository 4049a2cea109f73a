"""ALAE training: the three-step update, R1, progressive growing, EMA and DDP; writes alae-rt checkpoints."""
