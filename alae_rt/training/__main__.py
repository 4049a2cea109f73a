"""`python -m alae_rt.training ...` = `alae-rt train ...`; the entry point for torchrun (`-m alae_rt.training`)."""

import sys

from alae_rt.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
