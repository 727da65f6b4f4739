"""A toy model and task for the training-loop tests, and a command-line runner for subprocesses.

The rule to learn: given random tokens, predict at every position the token one step back.
One causal attention layer with learned positions learns it (attend to the previous position),
so the loss falls from ln(vocab) within a few dozen steps.

``python tests/train/toy.py --out DIR [--resume] ...`` trains it (see ``main``); under
``torchrun`` each rank runs it as one process of a distributed run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnlab.attention import MultiHeadAttention
from attnlab.models.checkpoint import SafetensorsModel
from attnlab.train import TrainConfig, seed_everything, train
from attnlab.train.distributed import process_rank

ASSET_FILE = "toy_task.json"


@dataclass
class ToyConfig:
    vocab_size: int = 12
    embed_dim: int = 32
    num_heads: int = 2
    block_size: int = 16
    dropout: float = 0.0


class ToyModel(SafetensorsModel, nn.Module):
    """Embeddings + one pre-norm causal attention layer (with dropout) + a linear head."""

    config_class = ToyConfig

    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embed = nn.Embedding(config.vocab_size, config.embed_dim)
        self.position_embed = nn.Embedding(config.block_size, config.embed_dim)
        self.norm = nn.LayerNorm(config.embed_dim)
        self.attn = MultiHeadAttention(config.embed_dim, config.num_heads, dropout=config.dropout)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.embed_dim, config.vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``(batch, seq)`` token ids -> ``(batch, seq, vocab)`` logits."""
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.token_embed(ids) + self.position_embed(positions)
        x = x + self.drop(self.attn(self.norm(x), is_causal=True))
        return self.head(x)


class ToyTask:
    """Random token windows ``(batch, block)``; the target at position t is the token at t - 1.

    A step's batch depends only on (seed, step, rank); ``step_delay`` slows every step down so a
    test can kill a run in the middle.
    """

    def __init__(self, *, vocab_size: int = 12, batch_size: int = 8, block_size: int = 16, seed: int = 0,
                 val_batches: int = 4, step_delay: float = 0.0) -> None:
        self.vocab_size, self.batch_size, self.block_size = vocab_size, batch_size, block_size
        self.seed, self.num_val, self.step_delay = seed, val_batches, step_delay
        self.requested: list[tuple[int, int, int]] = []  # (step, rank, world_size) of each train_batch

    def _batch(self, key: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(key)
        return torch.randint(self.vocab_size, (self.batch_size, self.block_size), generator=generator)

    def train_batch(self, step: int, rank: int, world_size: int) -> torch.Tensor:
        self.requested.append((step, rank, world_size))
        if self.step_delay:
            time.sleep(self.step_delay)
        return self._batch((self.seed * 1_000_003 + step) * 1_000 + rank)

    def val_batches(self):
        return [self._batch(2**40 + index) for index in range(self.num_val)]

    def loss(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        logits = model(batch)[:, 1:]  # position 0 has no previous token
        return F.cross_entropy(logits.reshape(-1, self.vocab_size), batch[:, :-1].reshape(-1))

    def count(self, batch: torch.Tensor) -> int:
        return batch.shape[0] * (batch.shape[1] - 1)

    def save_assets(self, folder: Path) -> None:
        (Path(folder) / ASSET_FILE).write_text(json.dumps({"vocab_size": self.vocab_size}))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Torch on one thread in every test module that imports this fixture: the toy model's tiny
    matrix products run ten times slower on two threads of a busy machine, and one thread gives
    the same bits as the runner (which uses one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def toy_config(**overrides) -> TrainConfig:
    """A TrainConfig small enough for a test: 40 steps of 8 windows of 16 tokens."""
    values = dict(batch_size=8, block_size=16, lr=1e-2, min_lr=1e-3, weight_decay=0.1, warmup_steps=5,
                  max_steps=40, eval_every=10, eval_batches=4, checkpoint_every=10, keep_last=100,
                  log_every=1, seed=0)
    return TrainConfig(**{**values, **overrides})


def toy_model(seed: int = 0, dropout: float = 0.0) -> ToyModel:
    seed_everything(seed)
    return ToyModel(ToyConfig(dropout=dropout))


def state_hash(model: nn.Module) -> str:
    """sha256 over every name and tensor byte of ``model.state_dict()``."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step-delay", type=float, default=0.0)
    parser.add_argument("--hash-dir", help="write rank<r>.sha256, the hash of the final weights, here")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)  # bit-for-bit equal runs need the same reduction order
    config = toy_config(max_steps=args.max_steps, checkpoint_every=args.checkpoint_every,
                        eval_every=args.eval_every, seed=args.seed)
    model = toy_model(args.seed, args.dropout)
    task = ToyTask(seed=args.seed, step_delay=args.step_delay)
    train(model, task, config, args.out, resume=args.resume, meta={"task": "toy"}, device="cpu")
    if args.hash_dir:
        (Path(args.hash_dir) / f"rank{process_rank()}.sha256").write_text(state_hash(model))


if __name__ == "__main__":
    main()
