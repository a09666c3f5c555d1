"""dpmed.models: ResNet9-GN (2D) and its ACS 3D variant; MCGAN (:mod:`dpmed.models.mcgan`).

Importing this package registers the Opacus per-sample gradient sampler of
:class:`~dpmed.models.acs.ACSConv3d`.
"""

from dpmed.models.acs import ACSConv3d, acs_split
from dpmed.models.mcgan import MCGANDiscriminator, MCGANGenerator, MCGANSettings, build_mcgan
from dpmed.models.resnet9 import (
    ResNet9,
    build_model,
    convert_2d_weights_to_acs,
    count_parameters,
    expected_num_parameters,
    gn_groups,
    stage_channels,
)

__all__ = [
    "ACSConv3d",
    "MCGANDiscriminator",
    "MCGANGenerator",
    "MCGANSettings",
    "ResNet9",
    "acs_split",
    "build_mcgan",
    "build_model",
    "convert_2d_weights_to_acs",
    "count_parameters",
    "expected_num_parameters",
    "gn_groups",
    "stage_channels",
]
