"""The base of every method's config section (the ``method`` section of a config).

Each registered method (see :mod:`fewlabel.methods`) has one subclass: its own options, frozen,
unknown keys refused, ``name`` the discriminator. Kept apart from the registry so that a
method package can define its section without importing the registry that lists it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class MethodOptions(BaseModel):
    """Options of one method; ``name`` says which."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str

    @property
    def needs_validation(self) -> bool:
        """Whether the method chooses on validation images, so a run without a val split
        must hold some out (``finetune`` with ``strategy: auto``)."""
        return False

    @property
    def wants_rest_pool(self) -> bool:
        """Whether the method learns from the unlabeled rest of DATA's training split, which the
        data loading then keeps in memory."""
        return False
