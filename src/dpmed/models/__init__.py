"""dpmed.models: ResNet9-GN (2D) and its ACS 3D variant; MCGAN of study B (:mod:`.mcgan`);
the CVAE and DP-CGAN of study C (:mod:`.cvae`); user-supplied encoder files (:mod:`.encoders`).

Importing :mod:`dpmed.models.acs` (which :mod:`.resnet9` does) registers the Opacus
per-sample gradient sampler of :class:`~dpmed.models.acs.ACSConv3d`. Names are imported on
first use, so a process that needs only the CVAE (a Flower ClientApp, started once per round)
does not import Opacus.
"""

from dpmed.settings import lazy_exports

_EXPORTS = {
    "acs": ("ACSConv3d", "acs_split"),
    "mcgan": ("MCGANDiscriminator", "MCGANGenerator", "MCGANSettings", "build_mcgan"),
    "resnet9": ("ResNet9", "build_model", "convert_2d_weights_to_acs", "count_parameters",
                "expected_num_parameters", "gn_groups", "stage_channels"),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
