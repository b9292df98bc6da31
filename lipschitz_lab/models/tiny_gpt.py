"""A tiny decoder-only transformer, nanoGPT's layout at CPU size: ``get_model("tiny_gpt", ...)``.

Tokens (B, T) int64 -> logits (B, T, V).  Token and position embeddings, ``n_layer``
pre-LayerNorm blocks of causal self-attention and a GELU MLP, a final LayerNorm and
``lm_head``, an ``nn.Linear(n_embd, V, bias=False)`` registered last, so that the probe
finds it as the last layer (its input is the penultimate activation, (B, T, n_embd)).

``tie_weights=True`` shares ``lm_head.weight`` with the token embedding as nanoGPT does
(``transformer.wte.weight = lm_head.weight``): one tensor, two uses.

Reference: Karpathy, nanoGPT ``model.py``; Radford et al. (2019), GPT-2.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lipschitz_lab.models.registry import register_model, takes_tokens


@dataclass
class GPTConfig:
    vocab_size: int                  # V: the data set's tokens, the width of lm_head
    block_size: int                  # the longest sequence T the position embedding covers
    n_layer: int = 2                 # two blocks train on a 2-core CPU in seconds
    n_head: int = 4                  # 4 heads of 16 dims at n_embd=64
    n_embd: int = 64                 # d: small enough for CPU studies, big enough to fit a char corpus
    dropout: float = 0.0             # nanoGPT's default for small data; 0 keeps runs deterministic
    bias: bool = True                # biases in the Linears and LayerNorms, as GPT-2
    tie_weights: bool = False        # lm_head.weight is the token embedding (nanoGPT ties by default)

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {name}={value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be a multiple of n_head={self.n_head}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got dropout={self.dropout!r}")
        for name in ("bias", "tie_weights"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {name}={getattr(self, name)!r}")


class CausalSelfAttention(nn.Module):
    """Multi-head attention in which position t sees positions <= t only."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)   # q, k, v at once
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, heads, T, C / heads)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=True)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C)))


class FeedForward(nn.Module):
    """Linear(d, 4d) -> GELU -> Linear(4d, d), as GPT-2."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = FeedForward(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TinyGPT(nn.Module):
    """Tokens (B, T) -> logits (B, T, V); ``lm_head`` is the last ``nn.Linear`` registered."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
            ln_f=nn.LayerNorm(cfg.n_embd, bias=cfg.bias),
        ))
        # registered last: the probe's layer (nanoGPT's lm_head has no bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2: the residual projections start smaller, 0.02 / sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.dim() != 2 or idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"tiny_gpt takes (B, T) integer tokens; got a {idx.dtype} tensor of shape "
                             f"{tuple(idx.shape)}")
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"a sequence of T={T} tokens is longer than block_size={self.config.block_size}")
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


@register_model("tiny_gpt")
@takes_tokens
def tiny_gpt(input_shape: tuple[int, ...], num_outputs: int, *, block_size: int | None = None,
             n_layer: int = 2, n_head: int = 4, n_embd: int = 64, dropout: float = 0.0,
             bias: bool = True, tie_weights: bool = False) -> TinyGPT:
    """``input_shape`` is (T,), the data set's sequence length; ``num_outputs`` the vocabulary V.

    ``block_size`` defaults to T; a smaller one raises.
    """
    if len(input_shape) != 1:
        raise ValueError(f"tiny_gpt takes token sequences of shape (T,); got input_shape={input_shape!r}")
    T = input_shape[0]
    block_size = T if block_size is None else block_size
    if not isinstance(block_size, bool) and isinstance(block_size, int) and block_size < T:
        raise ValueError(f"block_size={block_size} is shorter than the data's sequences (T={T})")
    return TinyGPT(GPTConfig(num_outputs, block_size, n_layer, n_head, n_embd, dropout, bias, tie_weights))
