"""Inference: find the images to enhance (:func:`collect_inputs`) and write each one's enhanced PNG
(:func:`run_infer`), recording what is finished in the output folder's :class:`Manifest`.

The loop runs on one device outside a Lightning Trainer on purpose: every image is processed exactly
once, outputs are written atomically one by one, and a bad file is reported without stopping the
others.
"""

import json
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from data.utils import (
    DataError,
    ImagePair,
    decode_image_array,
    list_images,
    save_png_atomic,
    scan_split,
    to_unit_float,
)
from engine.enhance import Enhance, enhance_one, is_per_image_failure, to_uint8
from utils.hparams import TileHparams
from utils.utils import atomic_write_text, log, sha256_of

MANIFEST_FLUSH_S = 5.0
"""``run_infer`` records finished outputs in its manifest at most this often (and when it stops)."""


@dataclass
class InferSummary:
    enhanced: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    out_dir: Path | None = None


# ---------------------------------------------------------------------------------------- inputs
def collect_inputs(infer_data_path: str, input_path: str | None) -> list[tuple[str, Path]]:
    """``(sub-dataset, file)`` to enhance: every ``<infer_data_path>/*/low`` image, or ``--input``:

    - a file: sub-dataset = its folder's name (the folder above when that is ``low``);
    - a sub-dataset folder (it holds ``low/``): its ``low/`` images, sub-dataset = its name;
    - a split (sub-folders with ``low/``): every sub-dataset, as for ``infer_data_path``;
    - any other folder of images: sub-dataset = its name (the folder above when that is ``low``).
    """
    root = Path(input_path) if input_path else Path(infer_data_path)
    if input_path and root.is_file():
        return [(_dataset_name(root.parent), root)]
    if not root.is_dir():
        raise DataError(f"inference input not found: {root}")
    sub_dataset = (root / "low").is_dir()
    if input_path and (sub_dataset or not any((p / "low").is_dir() for p in root.iterdir() if p.is_dir())):
        folder = root / "low" if sub_dataset else root
        files = list_images(folder)
        if not files:
            raise DataError(f"no images in {folder}")
        return [(_dataset_name(folder), f) for f in files]
    pairs: dict[str, list[ImagePair]] = scan_split(root, require_high=False, use_high=False)
    return [(dataset, pair.low) for dataset, group in pairs.items() for pair in group]


def _dataset_name(folder: Path) -> str:
    """Output sub-folder for the images of ``folder``: its name, or its parent's for a ``low`` folder
    (``X/low`` and ``Y/low`` are two sub-datasets, not one called ``low``)."""
    folder = Path(os.path.abspath(folder))  # "." and ".." resolved; a symbolic link keeps its own name
    if folder.name == "low" and folder.parent.name:
        folder = folder.parent
    return folder.name or "input"


# -------------------------------------------------------------------------------------- manifest
class Manifest:
    """``<out_dir>/manifest.json``: the checkpoint the folder is filled with and, per output (its path
    relative to ``out_dir``), the source file and checkpoint it was made from."""

    def __init__(self, out_dir: Path, checkpoint_path: str) -> None:
        self.out_dir = out_dir
        self.path = out_dir / "manifest.json"
        self.checkpoint_path = str(checkpoint_path)
        self.digest = sha256_of(checkpoint_path) if Path(checkpoint_path).is_file() else str(checkpoint_path)
        self.records: dict[str, dict] = {}
        self._flushed = time.monotonic()

    @classmethod
    def load(cls, out_dir: Path, checkpoint_path: str, overwrite: bool) -> "Manifest":
        """The manifest already in ``out_dir`` (empty if none), for outputs of ``checkpoint_path``.
        Refused: an unreadable manifest, and (without ``overwrite``) one of another checkpoint."""
        manifest = cls(out_dir, checkpoint_path)
        try:
            document = json.loads(manifest.path.read_text()) if manifest.path.is_file() else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DataError(
                f"cannot read {manifest.path} ({error}); delete it (finished outputs are then redone) "
                "or choose another --experiment_name"
            ) from error
        previous = document.get("checkpoint_sha256")
        if document and previous != manifest.digest and not overwrite:
            raise DataError(
                f"{out_dir} holds outputs of another checkpoint (sha256 {str(previous)[:12]}...); "
                "pass --overwrite to replace them or choose another --experiment_name"
            )
        manifest.records = document.get("outputs", {})
        return manifest

    def check(self, targets: list[tuple[Path, Path]], overwrite: bool) -> None:
        """Refuse ``(source, output)`` pairs where two sources would share an output, and (without
        ``overwrite``) an existing output that another source file made."""
        seen: dict[Path, Path] = {}
        for src, dst in targets:
            if dst in seen:
                raise DataError(f"{src} and {seen[dst]} would both be written to {dst}; rename one of them")
            seen[dst] = src
        if overwrite:
            return
        clashes = [
            f"{dst} (made from {self.records[self._key(dst)]['source']}; this run: {_source(src)})"
            for src, dst in targets
            if dst.is_file()
            and self.records.get(self._key(dst), {}).get("source", _source(src)) != _source(src)
        ]
        if clashes:
            raise DataError(
                f"{len(clashes)} output(s) in {self.out_dir} were made from other files of the same name: "
                + "; ".join(clashes[:3])
                + (f" (+{len(clashes) - 3} more)" if len(clashes) > 3 else "")
                + "; pass --overwrite to replace them or choose another --experiment_name"
            )

    def is_done(self, src: Path, dst: Path) -> bool:
        """``dst`` exists and is recorded as made from ``src`` with this checkpoint."""
        return dst.is_file() and self.records.get(self._key(dst)) == self._entry(src)

    def record(self, src: Path, dst: Path) -> None:
        self.records[self._key(dst)] = self._entry(src)

    def forget(self, dst: Path) -> None:
        self.records.pop(self._key(dst), None)

    def flush(self) -> None:
        """Write the manifest (atomically)."""
        document = {
            "checkpoint_path": self.checkpoint_path,
            "checkpoint_sha256": self.digest,
            "outputs": self.records,
        }
        atomic_write_text(self.path, json.dumps(document, indent=2, ensure_ascii=False))
        self._flushed = time.monotonic()

    def flush_if_due(self) -> None:
        """:meth:`flush` if the last one is at least :data:`MANIFEST_FLUSH_S` old."""
        if time.monotonic() - self._flushed >= MANIFEST_FLUSH_S:
            self.flush()

    def _key(self, dst: Path) -> str:
        return dst.relative_to(self.out_dir).as_posix()

    def _entry(self, src: Path) -> dict:
        return {"source": _source(src), "checkpoint_sha256": self.digest}


def _source(src: Path) -> str:
    return str(src.resolve())


# ---------------------------------------------------------------------------------------- the loop
def run_infer(
    enhance: Enhance,
    inputs: list[tuple[str, Path]],
    out_dir: Path,
    tiles: TileHparams,
    overwrite: bool,
    checkpoint_path: str,
) -> InferSummary:
    """Enhance every input into ``out_dir/<sub-dataset>/<stem>.png``.

    A re-run skips an output only when the :class:`Manifest` records it from the same source and
    checkpoint (``overwrite`` redoes everything); outputs not recorded (say, written just before a
    kill) are redone, so a folder never mixes checkpoints or sources. Refused without ``overwrite``:
    a folder filled with another checkpoint, and an output that another source file made (two input
    folders of the same name). A file that fails (unreadable, out of memory even in the smallest
    tiles, a failed write) is reported and gets no output; the others go on. The next input is
    decoded, and the last output encoded and written, in one thread each while the model runs; an
    output is recorded once its write has finished, and a stop (Ctrl-C, an error) waits for the
    write under way and records it.
    """
    summary = InferSummary(out_dir=out_dir)
    manifest = Manifest.load(out_dir, checkpoint_path, overwrite)
    targets = [(src, out_dir / dataset / f"{src.stem}.png") for dataset, src in inputs]
    manifest.check(targets, overwrite)
    manifest.flush()
    todo = []
    for src, dst in targets:
        if not overwrite and manifest.is_done(src, dst):
            summary.skipped.append(dst)
        else:
            manifest.forget(dst)  # recorded again once rewritten, or gone if this image fails
            todo.append((src, dst))

    # The next image is decoded ahead and the last output encoded and written behind the model, one
    # thread each (decoders and zlib release the GIL); on a GPU the PNG work dominates otherwise. Both
    # threads hold 8-bit arrays only (a 4K image: 25 MB each), not float tensors.
    reader = ThreadPoolExecutor(1, thread_name_prefix="infer-read")
    writer = _WriteBehind(manifest, summary)
    progress = tqdm(
        total=len(targets), initial=len(summary.skipped), desc="infer", unit="img", dynamic_ncols=True
    )
    try:
        upcoming = reader.submit(decode_image_array, todo[0][0]) if todo else None
        for i, (src, dst) in enumerate(todo):
            read = upcoming
            upcoming = reader.submit(decode_image_array, todo[i + 1][0]) if i + 1 < len(todo) else None
            try:
                pred, info = enhance_one(enhance, to_unit_float(read.result()).unsqueeze(0), tiles)
                if info.get("retries"):
                    log.info("%s: enhanced in %d px tiles after running out of memory", src, info["tile"])
                image = to_uint8(pred)
                del pred
            except Exception as error:
                _failed(summary, src, dst, error)
                continue
            finally:
                progress.update()
            writer.submit(src, dst, image)
        writer.wait()
    finally:  # also on Ctrl-C: the output under way is finished, and what finished is recorded
        reader.shutdown(cancel_futures=True)
        writer.close()
        progress.close()
        try:
            manifest.flush()
        except OSError as error:  # e.g. a full disk; must not hide the error that stopped the loop
            log.warning(
                "could not record the finished outputs in %s (%s); a re-run redoes them", manifest.path, error
            )
    return summary


class _WriteBehind:
    """Encodes and writes one output at a time in a thread of its own; an output is recorded (in the
    manifest and the summary) once its file is complete."""

    def __init__(self, manifest: Manifest, summary: InferSummary) -> None:
        self.manifest = manifest
        self.summary = summary
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="infer-write")
        self._pending: tuple[Path, Path, Future] | None = None  # the one output being written

    def submit(self, src: Path, dst: Path, image) -> None:
        """Wait for the previous output, then start writing ``image`` to ``dst``."""
        self.wait()
        self._pending = (src, dst, self._pool.submit(save_png_atomic, dst, image))

    def wait(self) -> None:
        """Wait for the output under way; record it once its file is complete."""
        if self._pending is None:
            return
        src, dst, future = self._pending
        try:
            future.result()
        except Exception as error:
            self._pending = None
            _failed(self.summary, src, dst, error)
            return
        self._pending = None
        self._finished(src, dst)
        self.manifest.flush_if_due()

    def close(self) -> None:
        """Let the write under way finish (also after Ctrl-C) and record it if it succeeded."""
        self._pool.shutdown()
        if self._pending is not None and self._pending[2].exception() is None:
            self._finished(*self._pending[:2])

    def _finished(self, src: Path, dst: Path) -> None:
        self.manifest.record(src, dst)
        self.summary.enhanced.append(dst)


def _failed(summary: InferSummary, src: Path, dst: Path, error: Exception) -> None:
    """The failure policy: a per-image failure is reported and ``dst`` removed (with ``--overwrite``
    no stale output of an earlier run remains); any other error stops the run."""
    if not is_per_image_failure(error):
        raise error
    log.error("failed: %s: %s", src, error)
    summary.failed.append((src, str(error)))
    dst.unlink(missing_ok=True)
