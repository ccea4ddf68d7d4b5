"""Paired low/high datasets and the Lightning data module of the train and valid splits.

Splits follow the seed's layout (``data/1_train``, ``data/2_valid``, each holding
``<SubDataset>/low`` and ``<SubDataset>/high``; bench.py and infer.py read ``data/3_bench`` and
``data/4_infer`` themselves). Every split a stage needs is fully validated in
:meth:`LowLightDataModule.setup`, so bad data raises a :class:`~data.utils.DataError` listing every
problem before the first step.

Batch format (a dict, collated by the default collate function):

- ``low``: float32 (B, 3, H, W) in [0, 1]
- ``high``: float32 (B, 3, H, W) in [0, 1]; the key is absent when the pair has no reference
  (``ImagePair.high`` is None)
- ``name``: list of B low file names (extension included), ``dataset``: list of B sub-dataset
  names, ``low_path``: list of B paths as strings

Train batches are random ``image_size`` crops with shared flips and 90-degree rotations; images
smaller than the crop are edge-padded (replicate) first.

A training or validation sub-dataset without ``low/`` is a **photo folder**: normal-light photos
(directly in it, or in ``high/``) whose low-light twin is synthesized when a sample is served
(:func:`data.synthesize.synthesize_low` with the ``synthesis`` regime of
:data:`data.synthesize.REGIMES`). A training sample draws its crop, flips and degradation from the
sampler's seed, so every epoch sees new noise and the stream is the same for the same ``seed``
(and after a resume); a validation photo is darkened whole from ``(synthesis_seed,
sub-dataset/name)``, the same pair in every epoch and run. Real pairs and photo folders mix in one
split: every real pair is listed ``train_repeat`` times an epoch, every photo ``photo_repeat`` times.

The training sampler (:class:`SeededSampler`) hands every index together with a seed for its crop
and flips, a function of ``(seed, epoch, index)`` only, so the data a run sees does not depend on
the number of loader workers or on which worker loads what, and a run resumed at an epoch boundary
sees exactly the data an uninterrupted run would. Validation batches hold one whole image each
(``batch_size=1``: the images differ in size), in sub-dataset then file order.

Under several processes (DDP) the validation split is sharded without repeats: each image goes to
exactly one rank (Lightning's default distributed sampler would pad the split with repeated images
to equal shard sizes, and count them twice in the synced metrics).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchvision import tv_tensors
from torchvision.transforms import v2

from data.synthesize import REGIMES, SynthesisParams, image_rng, synthesize_low
from data.utils import (
    DECODE_THREADS,
    DataError,
    DecodedImages,
    ImagePair,
    decode_image_array,
    image_size,
    to_unit_float,
    validate_split,
    writable_contiguous,
)
from utils.hparams import DataHparams, field_values

log = logging.getLogger(f"illrecnet.{__name__}")  # shown by utils.utils.setup_logging


class RandomRot90(v2.Transform):
    """Rotate by k * 90 degrees, k uniform in {0, 1, 2, 3}; exact (no interpolation), shared by all inputs."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"k": int(torch.randint(4, ()).item())}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return tv_tensors.wrap(torch.rot90(inpt, params["k"], dims=(-2, -1)), like=inpt)


def train_transform(crop_size: int | None, augment: bool) -> v2.Transform:
    """Paired training transform: edge-padded random crop, then random flips and 90-degree rotations.

    Call it once on ``(low, high)`` wrapped as ``tv_tensors.Image`` so both get the same parameters.
    """
    steps: list[v2.Transform] = []
    if crop_size is not None:
        steps.append(v2.RandomCrop(crop_size, pad_if_needed=True, padding_mode="edge"))
    if augment:
        steps += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), RandomRot90()]
    return v2.Compose(steps) if steps else v2.Identity()


class SeededSampler(DistributedSampler):
    """Shuffled training indices, each paired with the seed of its crop and flips: ``(index, seed)``.

    Order and seeds depend only on ``(seed, epoch)`` (Lightning calls :meth:`set_epoch` every epoch,
    resumed runs included), never on a worker's random state: persistent loader workers keep their
    random state across epochs, so with a plain sampler a run resumed at an epoch boundary saw
    different crops from an uninterrupted one. It is a ``DistributedSampler`` (one replica without
    DDP), so Lightning keeps it and under DDP every rank gets its own shard of the same permutation.
    """

    def __init__(self, dataset: Dataset, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self._skip = (0, 0)

    def skip(self, epoch: int, samples: int) -> None:
        """In ``epoch`` only, leave out the first ``samples`` of this rank's shard: the part of an
        epoch that a run stopped inside it had already trained on. The length stays the full
        epoch's, as Lightning counts the resumed epoch's batches from where it stopped."""
        if samples < 0:
            raise ValueError(f"samples must be >= 0, got {samples}")
        self._skip = (epoch, samples)

    def __iter__(self):
        indices = list(super().__iter__())  # this rank's shard of the (seed + epoch) permutation
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        seeds = torch.randint(2**62, (len(self.dataset),), generator=generator).tolist()  # per index
        epoch, samples = self._skip
        if self.epoch == epoch:
            indices = indices[samples:]
        return iter([(index, seeds[index]) for index in indices])


def decode_in_memory(paths: Sequence[Path], limit_gb: float) -> DecodedImages:
    """Decode ``paths`` (each once) into memory: ``{path: (H, W, 3) uint8/uint16 array}``.

    Empty when ``limit_gb`` is 0, or when the decoded images would take more than ``limit_gb``
    (estimated from the image headers at 3 bytes per pixel, then checked on the decoded arrays,
    since 16-bit files take twice that); the reason is logged and the caller reads from disk.
    Decoding runs in a thread pool (the decoders release the GIL). The data module gets the same
    result from its split validation instead (``validate_split(keep=...)``), without decoding twice.
    """
    paths = list(dict.fromkeys(paths))
    decoded = DecodedImages(limit_gb)
    if decoded.overflowed or not paths:
        return decoded
    estimate = sum(w * h * 3 for w, h in map(image_size, paths)) / 1e9
    if estimate > limit_gb:
        log.info(
            "training images not kept in memory: %d files take about %.2f GB decoded, over cache_gb=%g; "
            "they are decoded from disk at every step (raise --cache_gb to keep them)",
            len(paths),
            estimate,
            limit_gb,
        )
        return DecodedImages(0)
    with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
        for path, array in zip(paths, pool.map(_decode_contiguous, paths), strict=True):
            decoded.offer(path, array)
    log_kept(decoded)
    return decoded


def log_kept(decoded: DecodedImages, what: str = "training") -> None:
    """Log whether the ``what`` images were kept in memory (nothing when the cache is off)."""
    if decoded.limit_gb <= 0:
        return
    training = what == "training"
    budget = (
        f"cache_gb={decoded.limit_gb:g}" if training else f"the {decoded.limit_gb:.2f} GB left of cache_gb"
    )
    if decoded.overflowed:
        log.info(
            "%s images not kept in memory: %.2f GB decoded, over %s; they are decoded from disk %s "
            "(raise --cache_gb to keep them)",
            what,
            decoded.nbytes / 1e9,
            budget,
            "at every step" if training else "again by the loader",
        )
    else:
        log.info(
            "kept %d decoded %s images in memory (%.2f GB; %s)",
            len(decoded),
            what,
            decoded.nbytes / 1e9,
            budget,
        )


def _decode_contiguous(path: Path) -> np.ndarray:
    return writable_contiguous(decode_image_array(path))


class PairedImageDataset(Dataset):
    """Low/high pairs, decoded with :func:`~data.utils.decode_image_array` (or taken from
    ``decoded``), optionally cropped and augmented, then scaled to float32 in [0, 1].

    8-bit images are cropped, flipped and rotated as uint8 and only the crop is converted, which
    gives exactly the values of converting first (the operations only move pixels).

    Args:
        pairs: the pairs, in the order they are served.
        crop_size: side of the square random crop (train); None keeps whole images.
        augment: random horizontal/vertical flips and 90-degree rotations, identical for low and high.
        decoded: images already decoded (:func:`decode_in_memory`), by path; others are read from disk.
        synthesis: degradation of the photos of photo folders (``ImagePair.synthetic``); default:
            the regime ``DataHparams.synthesis`` names.
        synthesis_seed: seed of a photo's fixed low image when it is served without a sample seed
            (validation).
    """

    def __init__(
        self,
        pairs: Sequence[ImagePair],
        crop_size: int | None = None,
        augment: bool = False,
        decoded: Mapping[Path, np.ndarray] | None = None,
        synthesis: SynthesisParams | None = None,
        synthesis_seed: int = 0,
    ) -> None:
        if crop_size is not None and crop_size < 1:
            raise ValueError(f"crop_size must be a positive integer or None, got {crop_size}")
        self.pairs = list(pairs)
        self.transform = train_transform(crop_size, augment)
        self.decoded = decoded if decoded is not None else {}
        self.synthesis = synthesis if synthesis is not None else REGIMES[DataHparams.synthesis]
        self.synthesis_seed = synthesis_seed

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        """``item``: an index, or ``(index, seed)`` from :class:`SeededSampler` to draw the crop and
        flips from that seed (the global random state is left untouched)."""
        if isinstance(item, tuple):
            index, seed = item
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self._load(index, seed)
        return self._load(item)

    def _image(self, path: Path) -> tv_tensors.Image:
        """(3, H, W): uint8 as stored (a view of the decoded array), 16-bit files as float in [0, 1]."""
        array = self.decoded.get(path)
        if array is None:
            array = decode_image_array(path)
        if array.dtype == np.uint8:
            return tv_tensors.Image(torch.from_numpy(writable_contiguous(array)).permute(2, 0, 1))
        return tv_tensors.Image(to_unit_float(array))

    def _synthesize(self, pair: ImagePair, seed: int | None) -> dict[str, Any]:
        """A photo's crop (or the whole photo) and its synthesized low-light twin; the degradation
        comes from the sample's seed, or from the photo's name when there is none."""
        high = to_unit_float(self.transform(self._image(pair.high)).as_subclass(torch.Tensor))  # (3, h, w)
        rng = (
            np.random.default_rng([seed, 1])
            if seed is not None
            else image_rng(self.synthesis_seed, f"{pair.dataset}/{pair.name}")
        )
        low = synthesize_low(high.permute(1, 2, 0).double().numpy(), rng, self.synthesis)  # (h, w, 3) uint8
        return {"low": to_unit_float(low), "high": high}

    def _load(self, index: int, seed: int | None = None) -> dict[str, Any]:
        pair = self.pairs[index]
        sample: dict[str, Any] = {"name": pair.name, "dataset": pair.dataset, "low_path": str(pair.low)}
        if pair.synthetic:
            return sample | self._synthesize(pair, seed)
        low = self._image(pair.low)
        if pair.high is None:
            sample["low"] = to_unit_float(self.transform(low).as_subclass(torch.Tensor))
            return sample
        high = self._image(pair.high)
        if low.shape != high.shape:  # validated in setup; guards against files changed since
            raise DataError(
                f"size mismatch in sub-dataset {pair.dataset}: {pair.low} is {tuple(low.shape[1:])} "
                f"but {pair.high} is {tuple(high.shape[1:])} (H, W)"
            )
        if low.dtype != high.dtype:  # an 8-bit file paired with a 16-bit one: both as float
            low, high = (tv_tensors.Image(to_unit_float(x.as_subclass(torch.Tensor))) for x in (low, high))
        low, high = self.transform(low, high)
        sample["low"] = to_unit_float(low.as_subclass(torch.Tensor))
        sample["high"] = to_unit_float(high.as_subclass(torch.Tensor))
        return sample


def _flatten(pairs: dict[str, list[ImagePair]], stage: str) -> list[ImagePair]:
    """All pairs in sub-dataset then file order; an error if ``setup(stage)`` has not filled them."""
    if not pairs:
        raise RuntimeError(f"no pairs loaded: call setup({stage!r}) before asking for this dataloader")
    return [pair for name in sorted(pairs) for pair in pairs[name]]


class LowLightDataModule(L.LightningDataModule):
    """The train and valid splits of ``data`` (:class:`~utils.hparams.DataHparams`, checked there),
    validated in :meth:`setup`.

    Stages: ``fit`` validates train and valid (training always validates: without a valid split,
    ``valid_holdout`` photos of the training photo folders stand in), ``validate`` the valid split.
    After setup, ``train_pairs`` and ``valid_pairs`` map each sub-dataset name to its pairs.

    Crops and flips of training samples are drawn from seeds that depend only on ``seed``, the
    epoch and the sample (:class:`SeededSampler`), whatever the number of loader workers; a
    validation photo is darkened from ``seed`` and its name. Held-out photos (``valid_holdout``) are
    evenly spaced by sub-dataset and name, the same ones in every run.

    Decoded images are kept in memory within ``data.cache_gb``: the training images by the split
    validation of the first ``setup("fit")`` (in the main process, before the loader workers start,
    which share that memory when forked; with the ``spawn`` start method, as on macOS and Windows,
    every worker holds its own copy), and kept for later fits of this data module; within what they
    leave, the valid split's (:attr:`eval_decoded`), so its loader does not decode every file again.
    """

    def __init__(self, data: DataHparams, seed: int) -> None:
        super().__init__()
        self.hp = DataHparams(**field_values(data, DataHparams))
        """The data settings (a copy of ``data``'s :class:`~utils.hparams.DataHparams` fields)."""
        paths = data.train_data_path
        self.train_data_paths = [str(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
        self.seed = seed
        self.decoded: DecodedImages | None = None
        """Decoded training images by path, kept by the first ``setup("fit")`` (or, if none ran,
        the first :meth:`train_dataloader`)."""
        self.eval_decoded = DecodedImages(0)
        """Decoded images of the valid split, within what :attr:`decoded` leaves of ``cache_gb``."""
        self.resume_epoch = 0
        """Epoch the first training epoch of this fit has (set when resuming from a checkpoint)."""
        self.resume_batches = 0
        """Batches of that epoch already trained (resuming from a checkpoint saved inside it)."""
        self.train_pairs: dict[str, list[ImagePair]] = {}
        self.valid_pairs: dict[str, list[ImagePair]] = {}

    def setup(self, stage: str) -> None:
        """Validate (fully decode) the splits this stage needs; raises DataError before any step."""
        if stage == "fit":
            # The split is decoded to be validated anyway: keep it then, unless an earlier fit did.
            keep = DecodedImages(self.hp.cache_gb) if self.decoded is None else None
            self.train_pairs = self._validate_train(keep)
            if keep is not None:
                log_kept(keep)
                self.decoded = keep
            held_out = self._hold_out()
            self.valid_pairs = self._validate_valid() | held_out
        elif stage == "validate":
            self.valid_pairs = self._validate_valid()
            if self.hp.valid_holdout:
                self.train_pairs = self._validate_train(None)
                self.valid_pairs |= self._hold_out()
        else:
            raise ValueError(f"unknown stage {stage!r}; expected fit or validate")

    def _validate_train(self, keep: DecodedImages | None) -> dict[str, list[ImagePair]]:
        """Every training split folder validated (photo folders allowed), their sub-datasets joined;
        the problems of all folders are reported together."""
        joined: dict[str, list[ImagePair]] = {}
        problems: list[str] = []
        for path in self.train_data_paths:
            try:
                found = validate_split(
                    path, require_high=True, min_size=self.hp.image_size, keep=keep, photos=True
                )
            except DataError as error:
                problems.append(str(error))
                continue
            for name in sorted(found.keys() & joined.keys()):
                problems.append(
                    f"{path}: sub-dataset {name!r} is also in another training folder; rename one"
                )
            joined |= found
        if problems:
            raise DataError("\n".join(problems))
        return joined

    def _hold_out(self) -> dict[str, list[ImagePair]]:
        """Take ``valid_holdout`` photos (evenly spaced over the training photos in sub-dataset then
        name order) out of :attr:`train_pairs`; returns them by sub-dataset, as validation pairs."""
        count = self.hp.valid_holdout
        if not count:
            return {}
        photos = [
            pair for name in sorted(self.train_pairs) for pair in self.train_pairs[name] if pair.synthetic
        ]
        if len(photos) <= count:
            raise DataError(
                f"valid_holdout={count} but the training split ({', '.join(self.train_data_paths)}) has "
                f"{len(photos)} photos in photo folders; at least one must stay for training"
            )
        picks = {photos[i] for i in np.linspace(0, len(photos) - 1, count).round().astype(int)}
        held: dict[str, list[ImagePair]] = {}
        for name in list(self.train_pairs):
            held_here = [p for p in self.train_pairs[name] if p in picks]
            if held_here:
                held[f"{name}-holdout"] = held_here
                self.train_pairs[name] = [p for p in self.train_pairs[name] if p not in picks]
        log.info("validating on %d photos held out of the training photo folders", len(picks))
        return held

    def _validate_valid(self) -> dict[str, list[ImagePair]]:
        """:func:`validate_split` of the valid split (photo folders allowed), keeping its decoded
        images in :attr:`eval_decoded` within what the kept training images leave of ``cache_gb``,
        so its loader does not decode every file a second time."""
        self.eval_decoded = DecodedImages(0)
        if not self.hp.valid_data_path:
            return {}
        kept_training = sum(array.nbytes for array in (self.decoded or {}).values())
        keep = DecodedImages(max(0.0, self.hp.cache_gb - kept_training / 1e9))
        pairs = validate_split(self.hp.valid_data_path, require_high=True, keep=keep, photos=True)
        log_kept(keep, "validation")
        self.eval_decoded = keep
        return pairs

    def _loader(self, dataset: Dataset, batch_size: int, sampler: Sampler | None) -> DataLoader:
        workers = self.hp.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=False,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        hp = self.hp
        pairs = _flatten(self.train_pairs, "fit")
        if self.decoded is None:
            self.decoded = decode_in_memory([p for pair in pairs for p in (pair.low, pair.high)], hp.cache_gb)
        real = [pair for pair in pairs if not pair.synthetic]
        photos = [pair for pair in pairs if pair.synthetic]
        pairs = real * hp.train_repeat + photos * hp.photo_repeat if photos else pairs * hp.train_repeat
        dataset = PairedImageDataset(
            pairs, hp.image_size, augment=True, decoded=self.decoded, synthesis=REGIMES[hp.synthesis]
        )
        trainer = self.trainer
        ranks = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = SeededSampler(dataset, self.seed, num_replicas=ranks[0], rank=ranks[1])
        # Loader workers take their first indices as soon as the loader is iterated, which in a run
        # resumed from an end-of-epoch checkpoint happens before Lightning's set_epoch for the next
        # epoch (and before Lightning restores its epoch counter): start from the resumed epoch.
        sampler.set_epoch(self.resume_epoch)
        sampler.skip(self.resume_epoch, self.resume_batches * hp.batch_size)
        return self._loader(dataset, hp.batch_size, sampler)

    def val_dataloader(self) -> DataLoader:
        dataset = PairedImageDataset(
            _flatten(self.valid_pairs, "validate"),
            decoded=self.eval_decoded | (self.decoded or {}),  # held-out photos were decoded as training
            synthesis=REGIMES[self.hp.synthesis],
            synthesis_seed=self.seed,
        )
        return self._loader(dataset, 1, self._unrepeated_sampler(dataset))

    def _unrepeated_sampler(self, dataset: Dataset) -> UnrepeatedDistributedSampler | None:
        """With several processes: every image on exactly one rank (shards differ by at most one
        image; Lightning keeps a given DistributedSampler). None in a single process."""
        trainer = self.trainer
        if trainer is None or trainer.world_size <= 1:
            return None
        if len(dataset) < trainer.world_size:
            raise DataError(
                f"{self.hp.valid_data_path}: {len(dataset)} validation pair(s) for {trainer.world_size} "
                "processes; each process needs at least one (use fewer devices or more validation pairs)"
            )
        return UnrepeatedDistributedSampler(
            dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
        )
