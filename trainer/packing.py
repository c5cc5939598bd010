"""Token streams for training and evaluation.

Training packs `<bos> joke <eos>` documents end to end into rows of max_seq_len + 1 tokens, with a
document id per token so attention (and RoPE positions) restart at every joke: no padding is wasted
and no joke sees its neighbour.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rujokes_model import ByteLevelBPETokenizer


@dataclass
class PackedRows:
    tokens: torch.Tensor        # (N, T+1) int64
    document_ids: torch.Tensor  # (N, T+1) int64, ids local to the row
    positions: torch.Tensor     # (N, T+1) position of each token inside its document

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def batch(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Inputs/targets for the given row indices (inputs drop the last column, targets the first)."""
        tokens, docs, positions = self.tokens[rows], self.document_ids[rows], self.positions[rows]
        targets = tokens[:, 1:].clone()
        # The first token of a new document is not predictable from the previous joke.
        targets[docs[:, 1:] != docs[:, :-1]] = -100
        return {"input_ids": tokens[:, :-1], "targets": targets,
                "document_ids": docs[:, :-1], "position_ids": positions[:, :-1]}


class TooFewTokens(ValueError):
    """The documents do not fill one row."""


def encode_documents(tokenizer: ByteLevelBPETokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer.encode_batch(texts, add_bos=True, add_eos=True)


def pack_documents(documents: list[list[int]], seq_len: int) -> PackedRows:
    """Concatenate documents and cut into rows of seq_len + 1 (the tail shorter than a row is dropped)."""
    row_len = seq_len + 1
    flat = torch.tensor([t for doc in documents for t in doc], dtype=torch.int64)
    doc_index = torch.repeat_interleave(torch.arange(len(documents)), torch.tensor([len(d) for d in documents]))
    starts = torch.cumsum(torch.tensor([0] + [len(d) for d in documents[:-1]]), 0)
    position = torch.arange(len(flat)) - starts[doc_index]
    n_rows = len(flat) // row_len
    if n_rows == 0:
        raise TooFewTokens(f"{len(flat)} tokens, shorter than one row of {row_len}")
    cut = n_rows * row_len
    tokens, docs, position = (x[:cut].view(n_rows, row_len) for x in (flat, doc_index, position))
    # Positions restart where a document begins inside a row; a document cut by the row start
    # continues from 0 too, since its earlier part is in another row (RoPE must stay in range).
    row_docs = docs - docs[:, :1]
    row_positions = position - torch.where(row_docs == 0, position[:, :1], torch.zeros_like(position))
    return PackedRows(tokens, row_docs, row_positions)


@dataclass
class EvalWindows:
    """Every token of every document except its <bos> is predicted exactly once."""
    tokens: list[list[int]]


def eval_windows(documents: list[list[int]], seq_len: int) -> EvalWindows:
    windows = []
    for doc in documents:
        # Windows of seq_len + 1 tokens that overlap by one: the last token of a window is
        # the first input of the next, so no target is skipped or counted twice.
        for start in range(0, max(len(doc) - 1, 1), seq_len):
            windows.append(doc[start:start + seq_len + 1])
    return EvalWindows(windows)
