"""DETR's encoder-decoder transformer (post-norm), DETR paper sec. 3.2 and fig. 10.

Differences from the "Attention is all you need" transformer, as in DETR: positional
encodings are added to the queries and keys (never the values) of every attention layer,
the decoder input is zeros plus learned query positions, and every decoder layer's output
goes through one shared final LayerNorm (auxiliary losses use them all).

Sequences are [L, B, d] (sequence first) like `nn.MultiheadAttention`'s default, whose
`in_proj_weight` / `out_proj` parameters are the original checkpoints' tensors one to one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class ExtraQueries:
    """Queries decoded beside the N learned ones, for training only (denoising, see
    train/denoising.py): M of them per image, each with its own content and position."""

    content: Tensor
    """[B, M, d] the decoder's input for them (the learned queries start from zeros)."""
    position: Tensor
    """[B, M, d] their query positions (the learned queries' are `query_embed`)."""
    attn_mask: Tensor
    """[N + M, N + M] bool, True where a query (row) may not see another (column) in the
    decoder's self-attention; rows and columns are the N learned queries, then the M extra."""


class EncoderLayer(nn.Module):
    """Self-attention over the image grid, then a feed-forward block; post-norm."""

    def __init__(self, d: int, nheads: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, nheads, dropout=dropout)
        self.linear1 = nn.Linear(d, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src: Tensor, pos: Tensor, padding: Tensor) -> Tensor:
        """src, pos: [HW, B, d]; padding: [B, HW] True on padding -> [HW, B, d]."""
        q = k = src + pos
        attn = self.self_attn(q, k, value=src, key_padding_mask=padding, need_weights=False)[0]
        src = self.norm1(src + self.dropout1(attn))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout2(ffn))


class DecoderLayer(nn.Module):
    """Self-attention among the queries, cross-attention to the encoder memory, feed-forward."""

    def __init__(self, d: int, nheads: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, nheads, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d, nheads, dropout=dropout)
        self.linear1 = nn.Linear(d, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.norm3 = nn.LayerNorm(d)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, tgt: Tensor, memory: Tensor, query_pos: Tensor, pos: Tensor, padding: Tensor,
                attn_mask: Tensor | None = None) -> Tensor:
        """tgt, query_pos: [N, B, d]; memory, pos: [HW, B, d]; padding: [B, HW] -> [N, B, d].
        attn_mask: [N, N] bool, True where query i may not see query j (None: all see all)."""
        q = k = tgt + query_pos
        attn = self.self_attn(q, k, value=tgt, attn_mask=attn_mask, need_weights=False)[0]
        tgt = self.norm1(tgt + self.dropout1(attn))
        attn = self.multihead_attn(
            tgt + query_pos, memory + pos, value=memory, key_padding_mask=padding, need_weights=False
        )[0]
        tgt = self.norm2(tgt + self.dropout2(attn))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(ffn))


class Encoder(nn.Module):
    def __init__(self, layer: EncoderLayer, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    def forward(self, src: Tensor, pos: Tensor, padding: Tensor) -> Tensor:
        for layer in self.layers:
            src = layer(src, pos, padding)
        return src


class Decoder(nn.Module):
    def __init__(self, layer: DecoderLayer, num_layers: int, d: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d)  # shared by every layer's output

    def forward(self, tgt: Tensor, memory: Tensor, query_pos: Tensor, pos: Tensor, padding: Tensor,
                attn_mask: Tensor | None = None) -> Tensor:
        """-> [L, N, B, d], every layer's output after the shared final norm."""
        out = []
        for layer in self.layers:
            tgt = layer(tgt, memory, query_pos, pos, padding, attn_mask)
            out.append(self.norm(tgt))
        return torch.stack(out)


class Transformer(nn.Module):
    """Encoder over the projected C5 grid, decoder of N learned queries."""

    def __init__(
        self,
        d: int = 256,
        nheads: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.encoder = Encoder(EncoderLayer(d, nheads, dim_feedforward, dropout), num_encoder_layers)
        self.decoder = Decoder(DecoderLayer(d, nheads, dim_feedforward, dropout), num_decoder_layers, d)
        self.d = d
        for p in self.parameters():  # as the original: Xavier on every matrix
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(
        self, src: Tensor, padding: Tensor, query_embed: Tensor, pos: Tensor,
        extra: ExtraQueries | None = None,
    ) -> tuple[Tensor, Tensor]:
        """src: [B, d, H, W] projected C5; padding: [B, H, W]; query_embed: [N, d];
        pos: [B, d, H, W]; extra: M more queries after the N (training only).

        Returns hs [L, B, N (+ M), d] (every decoder layer, normed) and memory [B, d, H, W].
        """
        b, d, h, w = src.shape
        src = src.flatten(2).permute(2, 0, 1)  # HW x B x d
        pos = pos.flatten(2).permute(2, 0, 1)
        padding = padding.flatten(1)  # B x HW
        query_pos = query_embed.unsqueeze(1).expand(-1, b, -1)  # N x B x d
        memory = self.encoder(src, pos, padding)
        if extra is not None:
            tgt = torch.cat([torch.zeros_like(query_pos), extra.content.transpose(0, 1)])
            query_pos = torch.cat([query_pos, extra.position.transpose(0, 1)])
            hs = self.decoder(tgt, memory, query_pos, pos, padding, extra.attn_mask)
            return hs.transpose(1, 2), memory.permute(1, 2, 0).reshape(b, d, h, w)
        hs = self.decoder(torch.zeros_like(query_pos), memory, query_pos, pos, padding)
        return hs.transpose(1, 2), memory.permute(1, 2, 0).reshape(b, d, h, w)
