"""``train.py`` with one fault injected, for tests/test_resume.py: the process stops itself at an exact
point, so a test can compare what each way of stopping leaves on disk.

    python tests/fault_train.py after-last:<epoch> <train.py flags>
        SIGKILL right after last.ckpt of <epoch> is written
    python tests/fault_train.py after-best:<epoch> <train.py flags>
        SIGKILL right after best.ckpt of <epoch> is written (before that epoch's last.ckpt)
    python tests/fault_train.py at-sample:<n>:<SIGNAL> <train.py flags>
        send SIGNAL when the loader fetches training sample n (1-based)
"""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train  # noqa: E402
from data.dataloader import PairedImageDataset  # noqa: E402
from engine.callbacks import AtomicCheckpointIO  # noqa: E402
from utils.utils import parse_hparams, run_main  # noqa: E402


def inject(fault: str) -> None:
    kind, *args = fault.split(":")
    if kind in ("after-last", "after-best"):
        name, epoch, save = f"{kind[6:]}.ckpt", int(args[0]), AtomicCheckpointIO.save_checkpoint

        def save_then_die(self, checkpoint, path, storage_options=None):
            save(self, checkpoint, path, storage_options)
            if Path(path).name == name and checkpoint["epoch"] == epoch:
                os.kill(os.getpid(), signal.SIGKILL)

        AtomicCheckpointIO.save_checkpoint = save_then_die
    elif kind == "at-sample":
        at, signum, served = int(args[0]), getattr(signal, args[1]), [0]
        getitem = PairedImageDataset.__getitem__

        def fetch(self, item):
            if isinstance(item, tuple):  # (index, seed): a training sample
                served[0] += 1
                if served[0] == at:
                    os.kill(os.getpid(), signum)
            return getitem(self, item)

        PairedImageDataset.__getitem__ = fetch
    else:
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    inject(sys.argv[1])
    sys.argv = ["train.py", *sys.argv[2:]]
    run_main(train.main, parse_hparams(train.TrainHparams, train.__doc__, sys.argv[1:]))
