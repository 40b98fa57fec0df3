"""Custom Keras layers of depthlab: the studies' blocks, serialisable, the same on all backends."""

# ruff: noqa: F401  (a plain list of re-exports)

from depthlab.layers.convnext import (
    ConvNeXtBlock,
    build_convnext,
    convnext_param_count,
    decay_mask,
    layer_count,
)
from depthlab.layers.fractional import fbm_path, fgn, gp_smooth
from depthlab.layers.initializers import TorchDefault, torch_fan_in
from depthlab.layers.layerscale import LayerScale
from depthlab.layers.maxnorm import MaxNormConv2D, MaxNormDense
from depthlab.layers.plainnet import (
    PLAINNET_VARIANTS,
    TABLE_II_VARIANTS,
    PlainBlock,
    PlainConvBlock,
    build_conv_plainnet,
    build_plainnet,
    plainnet_activation_layers,
    plainnet_switches,
)
from depthlab.layers.residual import PreActBlock
from depthlab.layers.scaled_residual import ScaledResidualStack, build_resnet
from depthlab.layers.vgg import (
    VGGEntryBlock,
    VGGProcessingBlock,
    VGGReductionBlock,
    build_vgg,
    gradient_flow_label,
    gradient_flow_labels,
    vgg_depth,
)
