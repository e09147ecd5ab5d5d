"""The autograd-free network stack: modules, layers, losses, initialisers, models, gradient checks,
and the transformer pieces (embeddings, norms, GELU/SiLU, attention, TransformerLM, BertEncoder).

Every layer pairs a ``forward`` that caches what it needs with a hand-derived ``backward`` that
returns dL/dx and accumulates parameter gradients (see :mod:`ternref.nn.module`).
"""

from ternref.nn import functional, init
from ternref.nn.activations import GELU, SiLU, erf
from ternref.nn.attention import KVCache, MultiHeadAttention, RoPE
from ternref.nn.bert import BertEncoder, BertLayer, BertOutput
from ternref.nn.embedding import Embedding
from ternref.nn.functional import col2im, conv_output_shape, im2col
from ternref.nn.gradcheck import check_layer_gradients, numerical_gradient, rel_error
from ternref.nn.init import (
    compute_fans,
    glorot_normal,
    glorot_uniform,
    kaiming_normal,
    kaiming_uniform,
    xavier_normal,
    xavier_uniform,
)
from ternref.nn.layers import (
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
)
from ternref.nn.losses import (
    CrossEntropyLoss,
    DistillationLoss,
    LMCrossEntropyLoss,
    Loss,
    SquaredHingeLoss,
    accuracy,
)
from ternref.nn.models import lenet5, mlp, small_cnn
from ternref.nn.module import Module, Parameter
from ternref.nn.norms import LayerNorm, RMSNorm
from ternref.nn.transformer import SwiGLU, TransformerBlock, TransformerLM, llama_ffn_dim

__all__ = [
    "Module",
    "Parameter",
    "functional",
    "init",
    "im2col",
    "col2im",
    "conv_output_shape",
    "Linear",
    "Conv2d",
    "MaxPool2d",
    "AvgPool2d",
    "ReLU",
    "Flatten",
    "Dropout",
    "BatchNorm1d",
    "BatchNorm2d",
    "Sequential",
    "Embedding",
    "LayerNorm",
    "RMSNorm",
    "GELU",
    "SiLU",
    "erf",
    "SwiGLU",
    "RoPE",
    "KVCache",
    "MultiHeadAttention",
    "TransformerBlock",
    "TransformerLM",
    "llama_ffn_dim",
    "BertLayer",
    "BertEncoder",
    "BertOutput",
    "Loss",
    "CrossEntropyLoss",
    "LMCrossEntropyLoss",
    "SquaredHingeLoss",
    "DistillationLoss",
    "accuracy",
    "compute_fans",
    "kaiming_uniform",
    "kaiming_normal",
    "glorot_uniform",
    "glorot_normal",
    "xavier_uniform",
    "xavier_normal",
    "mlp",
    "lenet5",
    "small_cnn",
    "numerical_gradient",
    "rel_error",
    "check_layer_gradients",
]
