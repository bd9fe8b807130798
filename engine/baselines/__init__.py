"""The peers SynerMedGen is measured against in ``bench quality``: the identity baseline (the
source, its intensities quantile-matched to the target's training histogram) and a specialized
pixel U-Net (MONAI ``BasicUNet``, one route-conditioned network trained with L1). Both are
:class:`engine.inference.pipeline.SliceSynthesizer` s, so they run the very volume loop the model
runs (same slicing, normalisation, re-stacking and units)."""
from engine.baselines.identity import IntensityMatch
from engine.baselines.unet import UNetSynthesizer, train_unet

__all__ = ["IntensityMatch", "UNetSynthesizer", "train_unet"]
