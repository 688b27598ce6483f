"""Which process this is under a multi-process launch (torchrun, SLURM's srun).

Every process runs the same seeded data preparation and training; only process 0 writes the
run directory. Several machines need a run directory on a shared filesystem.
"""

from __future__ import annotations

import os


def global_rank() -> int:
    """The process's global rank from the launcher's environment (0 when not launched so)."""
    for variable in ("RANK", "SLURM_PROCID"):
        if os.environ.get(variable, "").isdigit():
            return int(os.environ[variable])
    return 0


def is_rank_zero() -> bool:
    return global_rank() == 0
