"""Stepwise fine-tuning (Qu et al. 2018): intermediate datasets and recipes of stages.

Light on purpose (the command line reads these names without importing the builders).
"""

from dataclasses import dataclass, field

from ..rundir import BUILT_LABELS, CLUSTERS_MARKER, RENDER_RECORD, SYNTHETIC_MARKER


@dataclass(frozen=True)
class IntermediateBuilder:
    """One way of building an intermediate dataset: the function that builds it
    (``module:function``, called with :func:`fewlabel.stepwise.build.build_intermediate`'s
    options), the file it writes last (its presence marks a finished build), the DATA of the
    result inside its folder (empty: the folder itself), and the options it cannot do without
    (option -> what to give)."""

    build: str
    marker: str
    data_file: str = ""
    requires: dict[str, str] = field(default_factory=dict)


INTERMEDIATE_BUILDERS: dict[str, IntermediateBuilder] = {
    "clusters": IntermediateBuilder("fewlabel.stepwise.build:build_clusters", CLUSTERS_MARKER),
    "synthetic": IntermediateBuilder(
        "fewlabel.stepwise.build:build_generated", SYNTHETIC_MARKER, BUILT_LABELS, {"generator": "module:function"}
    ),
    "depth-render": IntermediateBuilder("fewlabel.depth.render:build_renders", RENDER_RECORD),
}
INTERMEDIATE_METHODS = tuple(INTERMEDIATE_BUILDERS)
DESCRIPTORS = ("handcrafted", "embedding", "both")
