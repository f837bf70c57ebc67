"""The prompt router: a small network on the pooled text embedding the pipeline already computes, mapping a prompt
to a point on the unit sphere; each code has a centre there, and the prompt goes to the code of the nearest centre.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pooled_text_embedding(prompt_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the text encoder's token embeddings over the attention mask: ``[B, L, D], [B, L] -> [B, D]``
    (float32). PixArt's T5 has no pooled output; the masked mean is independent of padding length."""
    mask = attention_mask.to(prompt_embeds.device, torch.float32).unsqueeze(-1)
    total = (prompt_embeds.float() * mask).sum(1)
    return total / mask.sum(1).clamp_min(1.0)


class PromptRouter(nn.Module):
    """``pooled [B, text_dim] -> logits [B, num_codes]`` = cosine(prompt point, code centre) / ``temperature``.

    Args:
        text_dim: width of the text encoder's embeddings (4096 for T5-XXL).
        num_codes: number of architecture codes ``K``.
        hidden_dim / embed_dim: widths of the MLP and of the sphere the prompts and centres live on.
        temperature: softmax temperature of the cosine logits.
    """

    def __init__(
        self, text_dim: int, num_codes: int, *, hidden_dim: int = 128, embed_dim: int = 32, temperature: float = 0.1
    ):
        super().__init__()
        self.text_dim, self.num_codes = text_dim, num_codes
        self.hidden_dim, self.embed_dim, self.temperature = hidden_dim, embed_dim, temperature
        self.norm = nn.LayerNorm(text_dim, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(text_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, embed_dim))
        self.centres = nn.Parameter(torch.randn(num_codes, embed_dim))

    def config(self) -> dict:
        return {
            "text_dim": self.text_dim,
            "num_codes": self.num_codes,
            "hidden_dim": self.hidden_dim,
            "embed_dim": self.embed_dim,
            "temperature": self.temperature,
        }

    def embed(self, pooled: torch.Tensor) -> torch.Tensor:
        """Prompt points on the unit sphere ``[B, embed_dim]``."""
        return F.normalize(self.mlp(self.norm(pooled.float())), dim=-1)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.embed(pooled) @ F.normalize(self.centres, dim=-1).T / self.temperature

    @torch.no_grad()
    def route(self, pooled: torch.Tensor) -> torch.Tensor:
        """Hard code index per prompt ``[B]`` (int64)."""
        return self(pooled).argmax(-1)
