"""`python -m alae_rt.cli ...` = `alae-rt ...`."""

import sys

from alae_rt.cli import main

sys.exit(main())
