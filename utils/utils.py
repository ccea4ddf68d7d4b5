"""Command-line parsing and small shared helpers."""

import dataclasses
import hashlib
import logging
import os
import sys
import tempfile
import typing
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser, set_parsing_settings

set_parsing_settings(docstring_parse_attribute_docstrings=True)
log = logging.getLogger("illrecnet")

T = TypeVar("T")


def build_parser(hparams_type: type, description: str) -> ArgumentParser:
    """A parser with one ``--name`` flag per field of ``hparams_type`` plus ``--config FILE.yaml``,
    ``--print_config`` and ``--help``. A boolean field takes the bare form (``--resume``), a value
    (``--resume true``) or its negation (``--no_resume``): jsonargparse's ``ActionYesNo``."""
    parser = ArgumentParser(description=description, exit_on_error=True)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the flags below.")
    hints = typing.get_type_hints(hparams_type)
    flags = [f for f in dataclasses.fields(hparams_type) if hints[f.name] is bool]
    # the help text jsonargparse reads from each field's docstring
    documented = ArgumentParser()
    documented.add_class_arguments(hparams_type, nested_key=None)
    helps = {action.dest: action.help for action in documented._actions}
    parser.add_class_arguments(hparams_type, nested_key=None, skip={f.name for f in flags})
    for f in flags:
        parser.add_argument(
            f"--{f.name}",
            action=ActionYesNo(no_prefix="no_"),
            nargs="?",
            default=f.default,
            help=helps.get(f.name),
        )
    return parser


def parse_hparams(
    hparams_type: type[T], description: str, argv: Sequence[str] | None = None, required: Sequence[str] = ()
) -> T:
    """Parse the command line into ``hparams_type``; a wrong value exits with a one-line message.
    ``required`` fields must be given a non-empty value (on the command line or in a config)."""
    parser = build_parser(hparams_type, description)
    namespace = parser.parse_args(argv)
    values = {f.name: namespace[f.name] for f in dataclasses.fields(hparams_type)}
    for name in required:
        if not values[name]:
            parser.error(f"--{name} is required")
    try:
        return hparams_type(**values)
    except (ValueError, TypeError) as error:
        parser.error(str(error))
        raise  # unreachable: parser.error exits


class _DropMessages(logging.Filter):
    """Drops the records of one logger whose message starts with one of ``prefixes``."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


THIRD_PARTY_NOISE = _DropMessages(
    # Lightning 2.6.6 advertises a logging service at every Trainer that has no LitLogger
    "💡 Tip: For seamless cloud logging",
    # Lightning 2.6.6, at every Trainer (each session, valid, the closing bench): the TPU line on
    # every machine without one ("GPU available" stays: it says where training runs)
    "TPU available:",
    # Lightning 2.6.6 before every fit: how it counts the scheduler's steps
    "Loading `train_dataloader` to estimate number of stepping batches.",
    # Lightning 2.6.6 when a session's best checkpoint is validated (the project's summary names the
    # checkpoint; a resumed fit still says "Restored all states", besides the project's own line)
    "Restoring states from the checkpoint path at",
    "Loaded model weights from the checkpoint at",
    # Lightning 2.6.6 at the end of every fit that ran its epochs or steps (the summary says how many);
    # "`Trainer.fit` stopped: No training batches." stays
    "`Trainer.fit` stopped: `max_epochs=",
    "`Trainer.fit` stopped: `max_steps=",
)
"""INFO records of ``lightning.pytorch.utilities.rank_zero`` that repeat in every run and that no user
acts on; only these messages are dropped, the logger's others (and every warning) stay."""


def silence_third_party_noise() -> None:
    """Targeted filters for what third-party code prints in every run and no user can act on; never a
    blanket filter, so the project's own warnings and the libraries' other ones still show."""
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if THIRD_PARTY_NOISE not in rank_zero.filters:
        rank_zero.addFilter(THIRD_PARTY_NOISE)
    # torch 2.14.1 deprecates LeafSpec; Lightning 2.6.6's own _pytree helper still builds and checks
    # one at every step's result collection (a DeprecationWarning from Lightning, a FutureWarning from
    # torch): matched by message, whatever the category.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def setup_logging() -> None:
    """Plain ``LEVEL message`` lines on stderr for the project's logger, and the third-party noise
    silenced (:func:`silence_third_party_noise`)."""
    silence_third_party_noise()
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _process_umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; restored at once (at import, one thread)
    os.umask(mask)
    return mask


NEW_FILE_MODE = 0o666 & ~_process_umask()
"""Permissions of a file written atomically: what a plain ``open(path, "w")`` would give (the
temporary files ``tempfile.mkstemp`` makes are private, 0600)."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``:
    readers see the old file or the new one, never a partial one. The temporary file is removed
    when the write fails; an ``OSError`` (e.g. a full disk) is re-raised naming ``path``."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, NEW_FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and str(path) not in str(error):
            message = f"cannot write {path}: {error.strerror or error}"
            raise (OSError(error.errno, message) if error.errno else OSError(message)) from error
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def run_main(main, hparams) -> None:
    """Run a script's ``main``. Known failures become one ``error:`` line instead of a traceback:
    bad data, settings, checkpoints, a non-finite training step, an incomplete bench or a metric
    that ``--strict_metrics`` requires but cannot compute exit with status 2, an ``OSError`` (a
    full disk, a permission) with status 1."""
    from data.utils import DataError
    from engine.bench import BenchError
    from engine.engine import EngineError
    from model.model import CheckpointError, NonFiniteError
    from utils.metrics import MetricUnavailableError

    setup_logging()
    try:
        main(hparams)
    except (
        DataError,
        EngineError,
        CheckpointError,
        NonFiniteError,
        BenchError,
        MetricUnavailableError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:
        log.debug("OSError", exc_info=True)
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
