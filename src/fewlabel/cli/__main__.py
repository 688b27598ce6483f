"""``python -m fewlabel.cli`` (used under torchrun and srun)."""

from . import main

main()
