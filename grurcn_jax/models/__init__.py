"""GRU-RCN models: the cell, the sequence layer, the paper's models and baselines."""

from grurcn_jax.models.baselines import VGGFrames, VGGRNN
from grurcn_jax.models.build import build_model, validate_model_config
from grurcn_jax.models.convgru import ConvGRU, ConvGRUCell
from grurcn_jax.models.grurcn import GRURCN, GRURCNEncoder
from grurcn_jax.models.losses import classification_loss

__all__ = ["ConvGRU", "ConvGRUCell", "GRURCN", "GRURCNEncoder", "VGGFrames",
           "VGGRNN", "build_model", "classification_loss", "validate_model_config"]
