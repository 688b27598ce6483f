"""The base of every method's config section (the ``method`` section of a config).

Each registered method (see :mod:`fewlabel.methods`) has one subclass: its own options, frozen,
unknown keys refused, ``name`` the discriminator. Kept apart from the registry so that a
method package can define its section without importing the registry that lists it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


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


class PoolDraw(MethodOptions):
    """How a method that learns from an unlabeled pool draws it (its ``unlabeled`` option, which
    names the pool, is the method's own: its default differs)."""

    pool_size: int | None = Field(None, ge=1, description="seeded random subset of the pool")
    allow_overlap: bool = Field(False, description="accept a pool holding evaluation images")
