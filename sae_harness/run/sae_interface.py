"""What SAEBench's evals read from a custom SAE, as its BaseSAE provides it: W_enc (D, F), W_dec
(F, D), b_enc, b_dec, encode / decode / forward, device, dtype and a CustomSAEConfig. Written here
rather than subclassing SAEBench's BaseSAE, whose import pulls TransformerLens (3.3 s before a bad
command line could be refused; docs/performance.md). A subclass sets the weights and its encode."""

import torch
from sae_bench.custom_saes.custom_sae_config import CustomSAEConfig
from torch import nn


class SAEBenchSAE(nn.Module):
    def __init__(self, d_in: int, d_sae: int, model_name: str, hook_layer: int, architecture: str):
        super().__init__()
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        hook_name = f"blocks.{hook_layer}.hook_resid_post"
        self.cfg = CustomSAEConfig(model_name, d_in=d_in, d_sae=d_sae, hook_layer=hook_layer, hook_name=hook_name)
        self.cfg.architecture, self.cfg.activation_fn_str, self.cfg.apply_b_dec_to_input = architecture, architecture, True
        self.cfg.dtype = "float32"

    @property
    def device(self) -> torch.device:
        return self.W_dec.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_dec.dtype

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("the SAE's own encode")

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        return acts @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))
