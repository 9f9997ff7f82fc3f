"""A small encoder-decoder Transformer language model and the WikiText-2 data it trains on, as Lightning's demo.
Parameter names and constructor arguments are Lightning's, so checkpoints move between the two."""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from loops.core.module import LightningModule
from loops.demos.synthetic import generator, warn_synthetic

WIKITEXT2_TOKENS = 2_088_628  # the training split of WikiText-2, end-of-line markers included
WIKITEXT2_VOCABULARY = 33_278


class PositionalEncoding(nn.Module):
    """Adds the sine / cosine encoding of each position (up to `max_len`) to a `(batch, time, dim)` input."""

    def __init__(self, dim: int, dropout: float = 0.1, max_len: int = 5000) -> None:
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        self.dim, self.max_len = dim, max_len
        self.pe: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.pe is None or self.pe.device != x.device:
            position = torch.arange(self.max_len, dtype=torch.float, device=x.device).unsqueeze(1)
            frequency = torch.exp(torch.arange(0, self.dim, 2, device=x.device).float()
                                  * (-math.log(10000.0) / self.dim))
            pe = torch.zeros(self.max_len, self.dim, device=x.device)
            pe[:, 0::2] = torch.sin(position * frequency)
            pe[:, 1::2] = torch.cos(position * frequency)
            self.pe = pe.unsqueeze(0)
        return self.dropout(x + self.pe[:, : x.size(1)])


class Transformer(nn.Module):
    """`forward(inputs, target)` -> log-probabilities of shape `(batch * time, vocab_size)`; the decoder sees
    `target` under a causal mask."""

    def __init__(self, vocab_size: int = WIKITEXT2_VOCABULARY, ninp: int = 200, nhead: int = 2, nhid: int = 200,
                 nlayers: int = 2, dropout: float = 0.2) -> None:
        super().__init__()
        self.pos_encoder = PositionalEncoding(ninp, dropout)
        self.embedding = nn.Embedding(vocab_size, ninp)
        self.transformer = nn.Transformer(d_model=ninp, nhead=nhead, num_encoder_layers=nlayers,
                                          num_decoder_layers=nlayers, dim_feedforward=nhid, dropout=dropout,
                                          batch_first=True)
        self.decoder = nn.Linear(ninp, vocab_size)
        self.ninp, self.vocab_size = ninp, vocab_size

    @staticmethod
    def generate_square_subsequent_mask(size: int) -> Tensor:
        """0 on and below the diagonal, -inf above: position t sees positions <= t only."""
        return torch.triu(torch.full((size, size), float("-inf")), diagonal=1)

    def forward(self, inputs: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is None:
            mask = self.generate_square_subsequent_mask(target.size(1)).to(inputs.device)
        scale = math.sqrt(self.ninp)
        src = self.pos_encoder(self.embedding(inputs) * scale)
        tgt = self.pos_encoder(self.embedding(target) * scale)
        output = self.decoder(self.transformer(src, tgt, tgt_mask=mask))
        return F.log_softmax(output, dim=-1).view(-1, self.vocab_size)


class WikiText2(Dataset[tuple[Tensor, Tensor]]):
    """Blocks of `block_size` token ids and the same block shifted by one, from `data_dir/wikitext-2.txt` (the
    training split of WikiText-2, as Lightning downloads it). Without that file: synthetic tokens of the real
    length and vocabulary size, with a warning; nothing is downloaded."""

    def __init__(self, data_dir: Path | str = Path("./data"), block_size: int = 35, download: bool = True) -> None:
        super().__init__()
        self.path = Path(data_dir) / "wikitext-2.txt"
        self.block_size = block_size
        if self.path.is_file():
            self.data, self.dictionary = tokenize(self.path)
        else:
            warn_synthetic("WikiText2", self.path, download)
            self.dictionary = [f"<token{i}>" for i in range(WIKITEXT2_VOCABULARY)]
            self.data = torch.randint(WIKITEXT2_VOCABULARY, (WIKITEXT2_TOKENS,), generator=generator())

    @property
    def vocab_size(self) -> int:
        return len(self.dictionary)

    def __len__(self) -> int:
        return len(self.data) // self.block_size - 1

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        start = index * self.block_size
        return self.data[start:start + self.block_size], self.data[start + 1:start + self.block_size + 1]


def tokenize(path: Path) -> tuple[Tensor, list[str]]:
    """The file's words (an `<eos>` after each line) as ids, numbered in order of first appearance, and the
    words by id."""
    ids: dict[str, int] = {}
    with path.open(encoding="utf8") as lines:
        tokens = [ids.setdefault(word, len(ids)) for line in lines for word in [*line.split(), "<eos>"]]
    return torch.tensor(tokens, dtype=torch.int64), list(ids)


class LightningTransformer(LightningModule):
    """`Transformer` trained with SGD (lr 0.1) on the negative log-likelihood of the next token."""

    def __init__(self, vocab_size: int = WIKITEXT2_VOCABULARY) -> None:
        super().__init__()
        self.model = Transformer(vocab_size=vocab_size)

    def forward(self, inputs: Tensor, target: Tensor) -> Tensor:
        return self.model(inputs, target)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        inputs, target = batch
        return F.nll_loss(self(inputs, target), target.view(-1))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.model.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader[tuple[Tensor, Tensor]]:
        return DataLoader(WikiText2())
