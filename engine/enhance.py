"""The model on one image: :class:`Enhance` (device, autocast, self-ensemble views, whole-image
statistics shared by tiles) and :func:`enhance_one` (whole or tiled, view by view).

bench, infer, the method comparison and the model card all enhance images through this module;
it knows nothing of files, scores or run folders.
"""

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import numpy as np
import torch

from data.utils import DataError
from model.blocks.attention import ChannelAttention, fixed_attention, record_attention
from model.blocks.enhancer import Enhancer
from model.blocks.exposure import ExposureCurve, fixed_exposure
from utils.hparams import TileHparams
from utils.tiling import enhance_image, is_out_of_memory

VIEWS = tuple((k, flip) for k in range(4) for flip in (False, True))
"""The 8 flips/rotations of the self-ensemble: ``(quarter turns, horizontal flip)``."""


def to_view(x: torch.Tensor, view: tuple[int, bool]) -> torch.Tensor:
    """``x`` rotated by ``view[0]`` quarter turns, then flipped horizontally if ``view[1]``."""
    t = torch.rot90(x, view[0], dims=(-2, -1))
    return t.flip(-1) if view[1] else t


def from_view(y: torch.Tensor, view: tuple[int, bool]) -> torch.Tensor:
    """Undo :func:`to_view`."""
    return torch.rot90(y.flip(-1) if view[1] else y, -view[0], dims=(-2, -1))


class Enhance:
    """``(1, 3, H, W)`` in [0, 1] -> enhanced ``(1, 3, H, W)``, optionally averaged over the 8
    flips/rotations (self-ensemble), with optional autocast.

    :meth:`run` is one pass of the model (what tiling calls per tile); calling the object averages
    the views of a whole image. :func:`enhance_one` does both: it tiles each view of the image on
    its own, so every view's tiles sit on the network's sampling grid.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        self_ensemble: bool = False,
        precision: str = "32-true",
    ) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.self_ensemble = self_ensemble
        self.autocast_dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
        self._shared: dict | None = None  # {attention layer: matrix} of the whole image, while tiling
        self._shared_mean: torch.Tensor | None = None  # the whole image's mean level, while tiling
        self.stride = max((m.stride for m in model.modules() if isinstance(m, Enhancer)), default=1)
        """The model's total downsampling factor: tiles start on multiples of it, so each tile is
        sampled on the same grid as the whole image."""

    @property
    def views(self) -> tuple[tuple[int, bool], ...]:
        return VIEWS if self.self_ensemble else VIEWS[:1]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._shared is not None and self.self_ensemble:
            raise RuntimeError("whole_image_statistics holds one view's matrices; tile with run(), per view")
        out = sum(from_view(self.run(to_view(x, view)), view) for view in self.views)
        return out / len(self.views)

    @torch.no_grad()
    def run(self, x: torch.Tensor) -> torch.Tensor:
        """The model on ``x`` as it is (one view), with the shared whole-image attention if any."""
        x = x.to(self.device)
        with torch.autocast(
            self.device.type,
            dtype=self.autocast_dtype or torch.float32,
            enabled=self.autocast_dtype is not None,
        ):
            if self._shared is None:
                return self.model(x).float()
            with fixed_attention(self.model, self._shared), fixed_exposure(self.model, self._shared_mean):
                return self.model(x).float()

    @contextmanager
    def whole_image_statistics(self, x: torch.Tensor, pixels: int) -> Iterator[None]:
        """Inside the block, :meth:`run` uses the global statistics of the whole image ``x``, not
        those of its own input: the mean level of the exposure curve (if the model has one), and
        the channel-attention matrices (of ``x`` shrunk with an area filter to at most ``pixels``
        pixels first, so this costs no more memory than one tile).

        Tiled inference runs its tiles inside: these are the enhancer's only global operations, so
        every tile then sees the same statistics and no tile comes out brighter or darker than its
        neighbours. A model with neither is left as it is.
        """
        if not any(isinstance(m, ChannelAttention | ExposureCurve) for m in self.model.modules()):
            yield
            return
        # one pass over the full-size image (no float copy of it), on the model's device
        mean = x.mean(dim=(1, 2, 3), keepdim=True, dtype=torch.float32).to(self.device)
        height, width = x.shape[-2:]
        scale = min(1.0, math.sqrt(pixels / (height * width)))
        guide = x.float()
        if scale < 1.0:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            guide = torch.nn.functional.interpolate(guide, size=size, mode="area")
        with fixed_exposure(self.model, mean), record_attention(self.model) as records:
            self.run(guide)
        self._shared = {layer: weights[0] for layer, weights in records.items()}
        self._shared_mean = mean
        try:
            yield
        finally:
            self._shared, self._shared_mean = None, None


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``(1, 3, H, W)`` any range -> ``(H, W, 3)`` uint8, clamped and rounded (the values of
    :func:`~utils.metrics.quantize_8bit`) on the tensor's device with one float temporary (a 4K
    image: 100 MB, where a chain of out-of-place steps held 300 MB)."""
    levels = x[0].float().clamp(0.0, 1.0).mul_(255.0).round_()
    return levels.to(torch.uint8).permute(1, 2, 0).contiguous().cpu().numpy()


def enhance_one(
    enhance: Enhance,
    x: torch.Tensor,
    tiles: TileHparams,
    shared_context: Callable[[torch.Tensor, int], AbstractContextManager] | None = None,
) -> tuple[torch.Tensor, dict]:
    """Enhance one image ``(1, 3, H, W)``: whole or in tiles (:func:`utils.tiling.enhance_image`),
    each self-ensemble view on its own: the view of the whole image is tiled (tile origins on the
    network's grid, attention shared from that view of the whole image) and turned back, so tiles
    reproduce the whole image for every view and every size. ``shared_context`` defaults to
    :meth:`Enhance.whole_image_statistics`. Returns the output and the last view's tiling info."""
    out, info = None, {}
    for view in enhance.views:
        y, info = enhance_image(
            enhance.run,
            to_view(x, view),
            tile=tiles.tile,
            overlap=tiles.tile_overlap,
            max_pixels=tiles.max_pixels,
            shared_context=shared_context or enhance.whole_image_statistics,
            align=enhance.stride,
        )
        y = from_view(y, view)
        out = y if out is None else out.add_(y)
    return out.div_(len(enhance.views)), info


def is_per_image_failure(error: Exception) -> bool:
    """Errors that concern one image and let the others go on: a bad file (DataError), a failed
    write (OSError: full disk, permissions) or out of memory even in the smallest tiles. Anything
    else (a bug) stops the loop. The policy of the bench and inference loops alike."""
    return isinstance(error, DataError | OSError) or is_out_of_memory(error)
