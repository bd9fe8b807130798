"""The peers SynerMedGen is measured against in ``bench quality``: the identity baseline (the
source, its intensities quantile-matched to the target's training histogram) and a specialized
pixel U-Net (MONAI ``BasicUNet``, one route-conditioned network trained with L1). Both are
:class:`engine.inference.pipeline.SliceSynthesizer` s, so they run the very volume loop the model
runs (same slicing, normalisation, re-stacking and units)."""
from __future__ import annotations

from engine.exports import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "IntensityMatch": "identity", "quantile_map": "identity", "UNetSynthesizer": "unet", "train_unet": "unet",
})
