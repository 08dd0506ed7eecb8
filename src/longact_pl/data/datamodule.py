"""LightningDataModule serving long-context prompts (and the task's reward) to the RL trainer."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import lightning as L
import torch
from torch.utils.data import DataLoader

from longact_pl.data.concat import target_length
from longact_pl.data.dataset import PromptDataset, WithPadding, keep_list
from longact_pl.data.order import ResumableOrder
from longact_pl.data.sources import GeneratedSource, JsonlSource, overlap
from longact_pl.data.types import SampleSource
from longact_pl.distributed import data_parallel_rank

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


def generated_parts(source: SampleSource | None) -> list[GeneratedSource]:
    """The generated sources in ``source``: itself, or the generated parts of a concatenation."""
    if isinstance(source, GeneratedSource):
        return [source]
    return [p for part in getattr(source, "sources", []) for p in generated_parts(part)]


class LongContextDataModule(L.LightningDataModule):
    """Batches of prompt records for RL, plus the task's reward.

    Each batch is a ``list[dict]`` with the keys ``prompt_ids`` (templated ids), ``references``,
    ``task``, ``target_length``, ``truncated`` and ``index``.

    The tokenizer normally comes from the model after instantiation (``datamodule.tokenizer = tok``);
    setting it also hands it to generated sources, which need it to measure lengths.

    Args:
        train: Training samples.
        val: Validation samples, or ``None``.
        tokenizer: Chat tokenizer; may be set later.
        batch_size: Prompts per training step (each gets ``group_size`` completions).
        val_batch_size: Prompts per validation batch.
        max_prompt_tokens: Templated prompts longer than this are middle-truncated.
        system_prompt: Optional system message for every prompt.
        calib_source: Samples for saliency calibration; ``None`` means ``train``.
        num_workers: DataLoader worker processes.
        seed: Seed of the training shuffle.
        reward: The task's reward ``(completions, references, **meta) -> list[float]``, exposed as
            ``datamodule.reward`` for the trainer.

    Raises:
        ValueError: If train and val are generated sources with the same seed (they would overlap).

    A validation file whose prompts also occur in the training file is logged as a warning with the count.
    """

    def __init__(
        self,
        train: SampleSource,
        val: SampleSource | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        batch_size: int = 2,
        val_batch_size: int = 8,
        max_prompt_tokens: int = 4096,
        system_prompt: str | None = None,
        calib_source: SampleSource | None = None,
        num_workers: int = 0,
        seed: int = 0,
        reward: Callable[..., list[float]] | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1 or val_batch_size < 1:
            raise ValueError("LongContextDataModule: batch_size and val_batch_size must be >= 1")
        if isinstance(train, GeneratedSource) and train.seed in [v.seed for v in generated_parts(val)]:
            where = "data.val.seed" if isinstance(val, GeneratedSource) else "a data.val.sources seed"
            raise ValueError(
                f"data.train.seed and {where} are both {train.seed}; validation would repeat training "
                "samples, give the held-out source a different seed"
            )
        files = isinstance(train, JsonlSource) and isinstance(val, JsonlSource)
        if files and (shared := overlap(train, val)):
            log.warning(
                "%d of the %d prompts of data.val (%s) also occur in data.train (%s): validation accuracy on "
                "them measures memorisation; use a held-out file",
                shared, len(val), val.path, train.path,
            )  # fmt: skip
        self.train = train
        self.val = val
        self.calib_source = calib_source if calib_source is not None else train
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size
        self.max_prompt_tokens = max_prompt_tokens
        self.system_prompt = system_prompt
        self.num_workers = num_workers
        self.seed = seed
        self.reward = reward
        self._tokenizer = None
        if tokenizer is not None:
            self.tokenizer = tokenizer

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase | None:
        """The chat tokenizer (settable; setting it also updates the generated sources)."""
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer
        for source in (self.train, self.val, self.calib_source):
            setter = getattr(source, "set_tokenizer", None)  # generated sources (and concatenations of them)
            if callable(setter):
                setter(tokenizer)

    def _dataset(self, source: SampleSource) -> PromptDataset:
        if self._tokenizer is None:
            raise RuntimeError(
                "LongContextDataModule.tokenizer is not set; assign the model's tokenizer first"
            )
        return PromptDataset(source, self._tokenizer, self.max_prompt_tokens, self.system_prompt)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches: a seeded permutation per epoch that resumes mid-epoch exactly."""
        data = self._dataset(self.train)
        order = ResumableOrder(len(data), self.batch_size, self.seed, self._position)
        return DataLoader(
            data,
            batch_size=self.batch_size,
            sampler=order,
            collate_fn=keep_list,
            num_workers=self.num_workers,
        )

    def _position(self) -> tuple[int, int, int, int]:
        """``(epoch, batches done in it, rank, ranks)`` from the trainer (resume-aware).

        Data-parallel ranks: the ranks of a sequence-parallel group get the same prompts.
        """
        trainer = self.trainer
        if trainer is None:
            return 0, 0, 0, 1
        loop = trainer.fit_loop.epoch_loop
        done = loop.batch_progress.current.completed if loop.restarting else 0
        return trainer.current_epoch, done, *data_parallel_rank(trainer)

    def extra_dataloader(self, seed: int) -> DataLoader:
        """Training batches in another seeded order (DAPO's dynamic sampling draws extra prompts here)."""
        return DataLoader(
            self._dataset(self.train),
            batch_size=self.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
            collate_fn=keep_list,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches grouped by target length (an empty list when there is no validation source).

        Samples of one length share a batch, so a short prompt is never padded to the longest one.
        """
        if self.val is None:
            return []
        order = sorted(range(len(self.val)), key=lambda i: (target_length(self.val, i), i))
        _, _, rank, world = self._position()
        share = order[rank::world]  # each rank scores its share; the metric sums across ranks
        missing = -(-len(order) // world) - len(share)  # 0 or 1: every rank runs as many batches
        share += [len(order) + i for i in (share or order)[:missing]]  # padding: generated, not scored
        return DataLoader(
            WithPadding(self._dataset(self.val)),
            batch_size=self.val_batch_size,
            sampler=share,
            collate_fn=keep_list,
            num_workers=self.num_workers,
        )

    def calibration_prompts(self, n: int) -> list[list[int]]:
        """Templated token ids of the first ``n`` calibration samples (for saliency calibration).

        Raises:
            ValueError: If the calibration source has fewer than ``n`` samples.
        """
        if n > len(self.calib_source):
            raise ValueError(f"asked for {n} calibration prompts but the source has {len(self.calib_source)}")
        data = self._dataset(self.calib_source)
        return [data[i]["prompt_ids"] for i in range(n)]
