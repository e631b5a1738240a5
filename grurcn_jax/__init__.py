"""GRU-RCN (Ballas et al., ICLR 2016) in JAX/Flax."""

__version__ = "0.1.0"
