"""Model blocks: shapes at odd sizes, gradients, separation, linear attention cost, budget, learning."""

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from model.blocks.attention import ChannelAttention, TransformerBlock, pixel_norms, pointwise_depthwise
from model.blocks.enhancer import Enhancer
from model.blocks.separation import Separation
from model.model import LowLightEnhancerLightning
from tests.conftest import keeps_shape, tiny_model

torch.set_num_threads(2)


def tiny_enhancer(trainable_separation: bool = False, **fields) -> Enhancer:
    return Enhancer(tiny_model(mlp_ratio=1.0, num_resolution=3, **fields), trainable_separation)


@pytest.mark.parametrize("size", [(1, 1), (37, 53), (401, 599)])
def test_enhancer_keeps_odd_sizes_and_is_finite(size):
    assert keeps_shape(tiny_enhancer(), 1, 3, *size)


def test_default_model_shape_at_odd_size():
    module = LowLightEnhancerLightning().eval()
    with torch.no_grad():
        y = module(torch.rand(2, 3, 37, 53))
    assert y.shape == (2, 3, 37, 53)


@pytest.mark.parametrize("trainable", [False, True])
def test_every_trainable_parameter_gets_a_gradient(trainable):
    model = tiny_enhancer(trainable_separation=trainable)
    x = torch.rand(2, 3, 37, 53)
    loss = (model(x) - x.flip(-1)).abs().mean()
    loss.backward()
    trainable_params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert ("separation.log_sigma" in trainable_params) == trainable
    for name, p in trainable_params.items():
        assert p.grad is not None, f"{name} received no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


@pytest.mark.parametrize("size", [(1, 1), (5, 3), (64, 80)])
def test_separation_reconstructs_its_input(size):
    sep = Separation(3, kernel_size=15, sigma=3.0)
    x = torch.rand(2, 3, *size)
    illumination, reflectance = sep(x)
    assert illumination.shape == reflectance.shape == x.shape
    assert torch.allclose(illumination * reflectance - sep.eps, x, atol=1e-5)
    assert (illumination > 0).all() and (reflectance > 0).all()


def test_separation_illumination_is_smooth():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 64, 64) * 0.5 + 0.25
    illumination, reflectance = Separation(3, kernel_size=15, sigma=3.0)(x)
    # The low-pass illumination varies far less between neighbours than the image does.
    tv = lambda t: (t[..., 1:, :] - t[..., :-1, :]).abs().mean()  # noqa: E731
    assert tv(illumination) < 0.2 * tv(x)


def test_frozen_separation_stays_frozen_and_trainable_learns():
    for trainable in (False, True):
        module = LowLightEnhancerLightning(tiny_model(), trainable_separation=trainable)
        sigma_before = module.model.separation.log_sigma.detach().clone()
        params = [p for p in module.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-2)
        x = torch.rand(1, 3, 32, 32)
        for _ in range(3):
            opt.zero_grad()
            (module(x) - 0.5).abs().mean().backward()
            opt.step()
        changed = not torch.equal(sigma_before, module.model.separation.log_sigma.detach())
        assert changed == trainable


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor produced by any operation (a quadratic attention matrix shows here)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def _memory(block, size: int, cross: bool) -> tuple[int, int]:
    x = torch.rand(1, 16, size, size, requires_grad=True)
    ctx = torch.rand(1, 16, size, size) if cross else None
    saved = 0

    def pack(t):
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _LargestTensor() as mode:
        block(x, ctx).sum().backward()
    return saved, mode.largest


@pytest.mark.parametrize("cross", [False, True])
def test_attention_memory_grows_linearly(cross):
    block = TransformerBlock(16, num_heads=2, mlp_ratio=2.0, cross=cross)
    saved_small, largest_small = _memory(block, 64, cross)
    saved_big, largest_big = _memory(block, 128, cross)  # 4x the pixels
    assert saved_big <= 5 * saved_small
    assert largest_big <= 5 * largest_small


def test_attention_matrix_is_channels_by_channels():
    attn = ChannelAttention(16, num_heads=4)
    with _LargestTensor() as mode:
        attn(torch.rand(1, 16, 96, 96))
    # Largest tensor is a feature map (3 x 16 x 96 x 96 floats), never a (96*96)^2 matrix.
    assert mode.largest <= 3 * 16 * 96 * 96 * 4


@pytest.mark.parametrize("cross", [False, True])
def test_channel_attention_equals_the_per_head_formula(cross):
    """The pixel-view computation (one masked (C x C) matrix for all heads) is exactly transposed
    attention: per head, softmax(temperature * cos(q_i, k_j)) over that head's channels, applied to
    v, then the output projection."""
    torch.manual_seed(0)
    attn = ChannelAttention(16, num_heads=4, cross=cross)
    with torch.no_grad():
        attn.temperature.uniform_(0.5, 2.0)
    x, context = torch.rand(2, 16, 9, 7), torch.rand(2, 16, 9, 7)
    if cross:
        q, (k, v) = attn.q(x), attn.kv(context).chunk(2, dim=1)
    else:
        q, k, v = attn.qkv(x).chunk(3, dim=1)
    heads = lambda t: t.reshape(2, 4, 4, 63)  # noqa: E731  (B, C, H, W) -> (B, heads, C / heads, HW)
    weights = torch.softmax(
        F.normalize(heads(q), dim=-1) @ F.normalize(heads(k), dim=-1).transpose(-2, -1) * attn.temperature, -1
    )  # (B, heads, d, d)
    expected = attn.proj((weights @ heads(v)).reshape(2, 16, 9, 7))
    torch.testing.assert_close(attn(x, context if cross else None), expected, atol=1e-5, rtol=1e-5)


def test_in_place_residuals_compute_the_same_function_and_gradients():
    """The blocks add their residuals into the branch outputs in place (and the gate's product without
    autograd): the same values and gradients as the out-of-place formulas."""
    from model.blocks.enhancer import ResidualConv

    torch.manual_seed(0)
    block, conv = TransformerBlock(8, 2, mlp_ratio=2.0, cross=True), ResidualConv(8)
    x, context = torch.rand(2, 8, 9, 7, requires_grad=True), torch.rand(2, 8, 9, 7)

    def by_formula(x):
        ffn = block.ffn
        x = x + block.attn(block.norm_attn(x), block.norm_context(context))
        a, b = ffn.dw(ffn.inp(block.norm_ffn(x))).chunk(2, dim=1)
        x = x + ffn.out(F.gelu(a) * b)
        return x + conv.conv2(F.gelu(conv.conv1(x)))

    outputs, grads = [], []
    for fn in (lambda x: conv(block(x, context)), by_formula):
        y = fn(x)
        (y * torch.linspace(0, 1, y.numel()).view_as(y)).sum().backward()
        outputs.append(y.detach())
        grads.append([x.grad.clone()] + [p.grad.clone() for p in (*block.parameters(), *conv.parameters())])
        x.grad = None
        block.zero_grad(), conv.zero_grad()
    torch.testing.assert_close(outputs[0], outputs[1])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)
    with torch.no_grad():  # the in-place gate
        torch.testing.assert_close(conv(block(x, context)), outputs[1])


def test_the_cpu_fast_paths_compute_the_same_function_and_gradients():
    """On a CPU the attention and feed-forward layers compute each part of a 1x1 + depth-wise pair on
    its own slice of the weights, and pixel norms as a product with ones (docs/speed.md): the same
    values and weight gradients as one convolution pair chunked into views, and as vector_norm."""
    torch.manual_seed(0)
    pointwise, depthwise = torch.nn.Conv2d(6, 12, 1), torch.nn.Conv2d(12, 12, 3, padding=1, groups=12)
    x = torch.rand(2, 6, 9, 7).contiguous(memory_format=torch.channels_last)
    grads = []
    for separate in (True, False):
        parts = pointwise_depthwise(x, pointwise, depthwise, parts=3, separate=separate)
        assert [p.shape for p in parts] == [(2, 4, 9, 7)] * 3
        if separate:  # each part its own contiguous channels-last map
            assert all(p.is_contiguous(memory_format=torch.channels_last) for p in parts)
        sum((p * (i + 1)).square().sum() for i, p in enumerate(parts)).backward()
        grads.append((parts, pointwise.weight.grad.clone(), depthwise.weight.grad.clone()))
        pointwise.zero_grad(), depthwise.zero_grad()
    (fast, *fast_grads), (plain, *plain_grads) = grads
    for a, b in zip(fast + fast_grads, plain + plain_grads, strict=True):
        torch.testing.assert_close(a, b)
    pixels = torch.randn(2, 5000, 8)
    torch.testing.assert_close(pixel_norms(pixels), torch.linalg.vector_norm(pixels, dim=1))


@pytest.mark.parametrize(("patch", "kernel"), [(2, 3), (2, 1), (4, 3)])
def test_strided_sampling_kernels_equal_pixel_shuffle_and_a_convolution(patch, kernel):
    """The sampling layers are single (transposed) strided convolutions whose kernels are rearranged
    from a convolution applied after pixel-unshuffle (or before pixel-shuffle): the same linear map."""
    from model.blocks.sampling import shuffle_conv_weight, unshuffle_conv_weight

    torch.manual_seed(0)
    x, features = torch.randn(2, 3, 8 * patch, 6 * patch), torch.randn(2, 5, 8, 6)
    w_in, w_out = torch.randn(5, 3 * patch**2, kernel, kernel), torch.randn(3 * patch**2, 5, kernel, kernel)
    pad = kernel // 2
    torch.testing.assert_close(
        F.conv2d(x, unshuffle_conv_weight(w_in, patch), stride=patch, padding=patch * pad),
        F.conv2d(F.pixel_unshuffle(x, patch), w_in, padding=pad),
        atol=1e-4,
        rtol=1e-4,
    )
    torch.testing.assert_close(
        F.conv_transpose2d(features, shuffle_conv_weight(w_out, patch), stride=patch, padding=patch * pad),
        F.pixel_shuffle(F.conv2d(features, w_out, padding=pad), patch),
        atol=1e-4,
        rtol=1e-4,
    )


def test_enhancer_returns_a_plain_contiguous_tensor():
    """Features are channels-last inside; callers (saving, export, tiling) get ordinary NCHW memory."""
    out = tiny_enhancer()(torch.rand(1, 3, 21, 30))
    assert out.is_contiguous()


def _gmacs(model, h, w) -> float:
    x = torch.rand(1, 3, h, w)
    with FlopCounterMode(display=False) as counter:
        model(x)  # gradients enabled, as in the budget's definition
    return counter.get_total_flops() / 2e9


def test_default_model_budget():
    model = LowLightEnhancerLightning().model
    params = sum(p.numel() for p in model.parameters())
    assert params <= 1.5e6
    macs_256 = _gmacs(model, 256, 256)
    macs_512 = _gmacs(model, 512, 512)
    assert macs_256 <= 6.0
    assert macs_512 <= 4.5 * macs_256


def _psnr(a, b) -> float:
    return 10 * math.log10(1.0 / torch.mean((a.clamp(0, 1) - b) ** 2).item())


def _save_checkpoint(module, path, without=()):
    """Write ``module`` as a Lightning checkpoint holds it (weights, flat hyper-parameters, version);
    the keys in ``without`` are left out, as in a checkpoint written before those options existed."""
    hparams = {k: v for k, v in module.hparams.items() if k not in without}
    version = {"pytorch-lightning_version": L.__version__}
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams, **version}, path)
    return path


def _tiled_psnr(model, image, tile: int, overlap: int) -> float:
    """PSNR of ``model``'s tiled output (tiles sharing the whole image's attention statistics, as
    infer.py runs large images) against its whole-image output; fails unless it actually tiled."""
    from engine.enhance import Enhance, enhance_one
    from utils.hparams import TileHparams

    enhance = Enhance(model, torch.device("cpu"), self_ensemble=False)
    whole = enhance(image).clamp(0, 1)
    tiles = TileHparams(tile=tile, tile_overlap=overlap, max_pixels=10**9)
    full_size = lambda x, pixels: enhance.whole_image_statistics(x, pixels=x.shape[-2] * x.shape[-1])  # noqa: E731
    tiled, info = enhance_one(enhance, image, tiles, shared_context=full_size)
    assert info["mode"] == "tiled"
    return _psnr(tiled, whole)


def test_learns_one_pair():
    torch.manual_seed(0)
    high = torch.rand(1, 3, 8, 8)
    high = torch.nn.functional.interpolate(high, size=(32, 32), mode="bilinear", align_corners=False)
    low = (high**2.2 * 0.15) ** (1 / 2.2) * 0.5  # darker, different tone curve
    module = LowLightEnhancerLightning()
    before = _psnr(module(low).detach(), high)
    opt = torch.optim.AdamW(module.parameters(), lr=2e-3)
    for _ in range(80):  # measured: 13.7 -> 37.2 dB
        opt.zero_grad()
        module.loss(module(low), high)["total"].backward()
        opt.step()
    after = _psnr(module(low).detach(), high)
    assert after >= before + 10, (before, after)


@pytest.mark.parametrize(
    ("self_ensemble", "size"),
    # the self-ensemble at the size off the network's stride only: its eight views at the even size
    # test nothing the odd size does not (each view on its own grid)
    [(False, (256, 256)), (False, (150, 227)), (True, (150, 227))],
)
def test_tiles_share_the_whole_image_statistics(self_ensemble, size):
    """Channel attention is the enhancer's only global operation. Tiles that each compute it from
    their own pixels only approximate the whole image (a trained checkpoint shifts a tile's
    brightness; README), so bench/infer give every tile the attention matrices of the whole image
    (``Enhance.whole_image_statistics``), one set per self-ensemble view. With the matrices of the
    full-size image the tiles reproduce the whole-image output to rounding error (measured 109-114 dB
    without / 121 dB with self-ensemble); from a copy shrunk to one tile's pixels, 56-61 / 65 dB
    against 30-47 / 43 dB for tiles on their own.
    At a size that is not a multiple of the network's stride too: each view is tiled on its own
    grid (tiling inside the views put a rotated view's tiles off the grid: 35 dB at 203x301)."""
    from engine.enhance import Enhance, enhance_one
    from utils.hparams import TileHparams
    from utils.tiling import enhance_tiled

    height, width = size
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    image = torch.stack([x * y, (1 - x) * y, 0.5 * (x + y)])[None] * 0.3  # smooth, dark, (1, 3, H, W)
    image = image + 0.02 * torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    # the eight views test the same mechanism on any width: the tiny model keeps the suite short
    model = LowLightEnhancerLightning(tiny_model() if self_ensemble else None).model
    for layer in model.modules():
        if isinstance(layer, ChannelAttention):
            layer.temperature.data.fill_(8.0)  # sharper attention, as training makes it
    enhance = Enhance(model, torch.device("cpu"), self_ensemble=self_ensemble)
    whole = enhance(image).clamp(0, 1)
    tiles = TileHparams(tile=160, tile_overlap=64, max_pixels=10**9)

    def full_size(x, pixels):
        return enhance.whole_image_statistics(x, pixels=x.shape[-2] * x.shape[-1])

    exact, info = enhance_one(enhance, image, tiles, shared_context=full_size)
    assert info["mode"] == "tiled"
    assert _psnr(exact, whole) >= 90.0
    on_their_own = _psnr(enhance_tiled(enhance, image, 160, 64), whole)
    shrunk, _ = enhance_one(enhance, image, tiles)
    assert _psnr(shrunk, whole) > on_their_own + 3
    assert enhance._shared is None  # the shared matrices are dropped after the image


def test_channel_attention_does_not_overflow_under_fp16_autocast():
    """--precision 16-mixed: q^T k sums H * W products, past fp16's 65504 at LOL's size, and the
    softmax made the whole output NaN; the attention normalises q and k first under half precision."""
    torch.manual_seed(0)
    layer = ChannelAttention(16, 2).eval()
    x = torch.randn(1, 16, 96, 96) * 30  # large activations, as a trained network has at 600x400
    with torch.no_grad():
        reference = layer(x)
        for dtype in (torch.float16, torch.bfloat16):
            with torch.autocast("cpu", dtype=dtype):
                half = layer(x).float()
            assert torch.isfinite(half).all(), dtype
            assert (half - reference).abs().max() < 0.05 * reference.abs().max(), dtype


def test_a_fresh_model_starts_by_brightening():
    """The output convolution's bias starts at OUTPUT_BIAS_INIT (+0.35 dB over ten quality seeds,
    README): an untrained model already adds about that much to a dark image."""
    from model.blocks.enhancer import OUTPUT_BIAS_INIT

    torch.manual_seed(0)
    model = Enhancer(tiny_model()).eval()
    dark = torch.full((1, 3, 32, 32), 0.05)
    with torch.no_grad():
        lift = (model(dark) - dark).mean().item()
    assert OUTPUT_BIAS_INIT == 0.25 and abs(lift - OUTPUT_BIAS_INIT) < 0.1


def test_sqrt_input_feeds_the_square_root_to_the_decoder():
    torch.manual_seed(0)
    on, off = tiny_enhancer(sqrt_input=True).eval(), tiny_enhancer(sqrt_input=False).eval()
    # both embeddings of the image see it: the half-resolution patches and the full-resolution stage
    embeddings = ("decoder.embed.proj.weight", "decoder.full_embed.weight")
    for name in embeddings:
        assert on.get_parameter(name).shape[1] == 6 and off.get_parameter(name).shape[1] == 3
    # With the square-root half of the embeddings zeroed, the model is the plain one with the same weights.
    off.load_state_dict({k: (v[:, :3] if k in embeddings else v) for k, v in on.state_dict().items()})
    x = torch.rand(1, 3, 37, 53)
    with torch.no_grad():
        assert not torch.allclose(on(x), off(x), atol=1e-6)
        for name in embeddings:
            on.get_parameter(name)[:, 3:] = 0
        torch.testing.assert_close(on(x), off(x))


def test_checkpoint_from_before_sqrt_input_and_standardization_loads_as_it_was_trained(tmp_path):
    from model.model import CheckpointError, check_compatible, load_checkpoint, read_checkpoint

    old = LowLightEnhancerLightning(tiny_model(sqrt_input=False, standardize_inputs=False)).eval()
    # written before both options
    hparams = {k: v for k, v in old.hparams.items() if k not in ("sqrt_input", "standardize_inputs")}
    path = tmp_path / "old.ckpt"
    version = {"pytorch-lightning_version": L.__version__}  # as every Lightning checkpoint has
    torch.save({"state_dict": old.state_dict(), "hyper_parameters": hparams, **version}, path)
    loaded = load_checkpoint(path)
    assert loaded.hparams.sqrt_input is False and loaded.hparams.standardize_inputs is False
    x = torch.rand(1, 3, 20, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), old(x))
    # Lightning's own loader, which builds the module with today's default first, gives the same model.
    direct = LowLightEnhancerLightning.load_from_checkpoint(path, map_location="cpu").eval()
    assert direct.hparams.sqrt_input is False and direct.hparams.standardize_inputs is False
    with torch.no_grad():
        torch.testing.assert_close(direct(x), old(x))
    # Resuming it under today's default is refused with the reason, not a wall of shape errors only.
    with pytest.raises(CheckpointError, match="sqrt_input: checkpoint False vs this run True"):
        check_compatible(LowLightEnhancerLightning(tiny_model()), read_checkpoint(path), path)


def test_patch_embed_standardizes_its_input_with_fixed_constants():
    from model.blocks.sampling import PatchEmbed

    torch.manual_seed(0)
    mean, std = [0.1] * 3 + [0.3] * 3, [0.09] * 3 + [0.16] * 3
    plain, standard = PatchEmbed(6, 8), PatchEmbed(6, 8, mean=mean, std=std)
    assert set(standard.state_dict()) == set(plain.state_dict())  # constants, not weights
    standard.load_state_dict(plain.state_dict())
    x = torch.rand(2, 6, 10, 14)
    with torch.no_grad():
        expected = plain((x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1))
        torch.testing.assert_close(standard(x), expected)
    with pytest.raises(ValueError, match="6 values each"):
        PatchEmbed(6, 8, mean=[0.1] * 3, std=[0.1] * 3)
    with pytest.raises(ValueError, match="both mean and std"):
        PatchEmbed(6, 8, mean=mean)


def test_standardized_inputs_have_unit_scale_on_dark_images_it_never_trained_on():
    """INPUT_STATS fit what the embeddings see: on dark images synthesized from a photo outside the
    training set, each standardised input (image and square root, illumination, reflectance) has a
    mean near 0 and a standard deviation near 1, not the ~0.1 scale of the raw dark values."""
    import numpy as np
    import skimage.data

    from data.synthesize import SynthesisParams, synthesize_low

    rng = np.random.default_rng(0)
    photo = skimage.data.astronaut()[::2, ::2] / 255.0
    low = (
        torch.stack(
            [
                torch.from_numpy(synthesize_low(photo, rng, SynthesisParams())).permute(2, 0, 1)
                for _ in range(6)
            ]
        ).float()
        / 255.0
    )  # (6, 3, 256, 256)
    model = Enhancer(tiny_model(standardize_inputs=True)).eval()
    embeds = {
        "decoder": model.decoder.embed,
        "illum": model.encoder.embed_illum,
        "refl": model.encoder.embed_refl,
    }
    seen = {}
    hooks = [
        m.register_forward_pre_hook(
            lambda m, args, name=name: seen.update({name: (args[0] - m.mean) / m.std})
        )
        for name, m in embeds.items()
    ]
    with torch.no_grad():
        model(low)
    for hook in hooks:
        hook.remove()
    assert set(seen) == set(embeds)
    for name, x in seen.items():  # astronaut: means 0.21 / 0.20 / -0.01, deviations 1.11 / 1.08 / 0.99
        assert x.mean().abs() < 0.5 and 0.6 < x.std() < 1.6, (name, x.mean().item(), x.std().item())
    assert low.std() < 0.2  # the raw input is far from unit scale


def test_checkpoint_of_a_standardized_model_reloads_standardized(tmp_path):
    """The constants are not in the state dict, so only the saved hyper-parameter brings them back:
    a checkpoint of ``standardize_inputs=True`` must rebuild that model, not today's default."""
    from model.model import load_checkpoint

    torch.manual_seed(0)
    trained = LowLightEnhancerLightning(tiny_model(standardize_inputs=True)).eval()
    path = tmp_path / "standardized.ckpt"
    checkpoint = {"state_dict": trained.state_dict(), "hyper_parameters": dict(trained.hparams)}
    torch.save({**checkpoint, "pytorch-lightning_version": L.__version__}, path)
    loaded = load_checkpoint(path)
    assert loaded.hparams.standardize_inputs is True
    x = torch.rand(1, 3, 20, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trained(x))
        plain = LowLightEnhancerLightning(tiny_model()).eval()
        plain.load_state_dict(trained.state_dict())  # the same weights without the standardisation
        assert not torch.allclose(plain(x), trained(x), atol=1e-3)


def test_full_resolution_stage_round_trips_through_checkpoints_and_tiles_exactly(tmp_path):
    """full_res_dim adds a stage at full resolution (the default's, docs/model.md):
    its checkpoints rebuild it, older ones load without it, and tiles with the whole image's
    attention still reproduce the whole-image output."""
    from model.model import load_checkpoint

    torch.manual_seed(0)
    full = LowLightEnhancerLightning(tiny_model(full_res_dim=8)).eval()
    plain = LowLightEnhancerLightning(tiny_model(full_res_dim=0)).eval()
    assert {k for k in full.state_dict() if "full_" in k} and not {
        k for k in plain.state_dict() if "full_" in k
    }
    path = _save_checkpoint(full, tmp_path / "full.ckpt")
    old = _save_checkpoint(plain, tmp_path / "old.ckpt", without=["full_res_dim"])
    x = torch.rand(1, 3, 20, 28)
    with torch.no_grad():
        assert load_checkpoint(path).hparams.full_res_dim == 8
        torch.testing.assert_close(load_checkpoint(path)(x), full(x))
        assert load_checkpoint(old).hparams.full_res_dim == 0
        torch.testing.assert_close(load_checkpoint(old)(x), plain(x))

    image = 0.3 * torch.rand(1, 3, 300, 451, generator=torch.Generator().manual_seed(1))
    assert _tiled_psnr(full.model, image, tile=160, overlap=64) >= 90.0


def test_convolutional_full_resolution_stage_is_its_own_architecture(tmp_path):
    """full_res_block conv swaps the full-resolution transformer block for a residual pair of 3x3
    convolutions: its checkpoints rebuild it, a full_res_dim checkpoint from before the option loads
    with the transformer block, and tiling still reproduces the whole image (the convolutions are
    local, so the overlap covers them)."""
    from model.blocks.enhancer import ResidualConv
    from model.model import load_checkpoint

    torch.manual_seed(0)
    conv = LowLightEnhancerLightning(tiny_model(full_res_dim=8, full_res_block="conv")).eval()
    attention = LowLightEnhancerLightning(tiny_model(full_res_dim=8, full_res_block="transformer")).eval()
    assert isinstance(conv.model.decoder.full_block, ResidualConv)
    assert not isinstance(attention.model.decoder.full_block, ResidualConv)
    _save_checkpoint(conv, tmp_path / "c.ckpt")
    _save_checkpoint(attention, tmp_path / "a.ckpt", without=["full_res_block"])
    x = torch.rand(1, 3, 20, 28)
    with torch.no_grad():
        assert load_checkpoint(tmp_path / "c.ckpt").hparams.full_res_block == "conv"
        torch.testing.assert_close(load_checkpoint(tmp_path / "c.ckpt")(x), conv(x))
        assert load_checkpoint(tmp_path / "a.ckpt").hparams.full_res_block == "transformer"
        torch.testing.assert_close(load_checkpoint(tmp_path / "a.ckpt")(x), attention(x))
    with pytest.raises(ValueError, match="full_res_block"):
        tiny_model(full_res_dim=8, full_res_block="dense")

    image = 0.3 * torch.rand(1, 3, 200, 263, generator=torch.Generator().manual_seed(1))
    assert _tiled_psnr(conv.model, image, tile=128, overlap=48) >= 90.0


def test_exposure_curve_brightens_dark_images_to_one_level_and_keeps_range():
    """exposure_level: the curve maps [0, 1] onto [0, 1] (black stays black, white stays white, a
    lamp in a dark photo is not pushed past 1), leaves an image brighter than the level as it is,
    and brings the same scene at exposures a factor of four apart to about the same brightness: the
    network behind it no longer has to learn each photo's gain."""
    from model.blocks.exposure import ExposureCurve

    curve = ExposureCurve(0.4)
    ramp = torch.linspace(0, 1, 101).view(1, 1, 1, -1).expand(1, 3, 4, 101)
    dark = torch.cat([ramp * 0.02, ramp[..., :10]], dim=-1)  # mostly dark, with a bright "lamp"
    with torch.no_grad():
        out = curve(dark)
        assert out.min() >= 0 and out.max() <= 1 + 1e-6
        assert (out.diff(dim=-1)[..., :100] >= 0).all()  # monotone along the dark ramp
        bright = 0.5 + 0.5 * ramp
        torch.testing.assert_close(curve(bright), bright, atol=1e-4, rtol=0)
        scene = 0.5 + 0.4 * torch.sin(torch.linspace(0, 20, 64 * 64)).view(1, 1, 64, 64).expand(1, 3, 64, 64)
        means = [curve(scene * exposure).mean().item() for exposure in (0.01, 0.04)]
    assert means[1] / means[0] < 1.3, means  # the raw means differ by 4x
    assert 0.2 < means[0] < 0.45
    with torch.no_grad():  # exponent 0.5: the spread narrowed (about 2x), the order kept
        half = ExposureCurve(0.4, exponent=0.5)
        means = [half(scene * exposure).mean().item() for exposure in (0.01, 0.04)]
    assert 1.5 < means[1] / means[0] < 3.0, means
    with pytest.raises(ValueError, match="exponent"):
        ExposureCurve(0.4, exponent=0.0)


def test_exposure_curve_round_trips_through_checkpoints_and_tiles_exactly(tmp_path):
    """A checkpoint with exposure_level rebuilds the curve (its learned level included); one from
    before the option loads without it. Tiles share the whole image's mean level: a tile of a dark
    image with one bright region would otherwise get its own gain and come out visibly darker or
    brighter than its neighbours."""
    from engine.enhance import Enhance, enhance_one
    from model.model import load_checkpoint
    from utils.hparams import TileHparams
    from utils.tiling import enhance_tiled

    torch.manual_seed(0)
    curved = LowLightEnhancerLightning(tiny_model(exposure_level=0.4)).eval()
    curved.model.exposure.log_level.data.fill_(math.log(0.35))  # as if trained
    plain = LowLightEnhancerLightning(tiny_model()).eval()
    assert plain.model.exposure is None
    _save_checkpoint(curved, tmp_path / "c.ckpt")
    _save_checkpoint(plain, tmp_path / "p.ckpt", without=["exposure_level"])
    x = 0.1 * torch.rand(1, 3, 20, 28)
    with torch.no_grad():
        torch.testing.assert_close(load_checkpoint(tmp_path / "c.ckpt")(x), curved(x))
        assert load_checkpoint(tmp_path / "p.ckpt").hparams.exposure_level == 0.0
        torch.testing.assert_close(load_checkpoint(tmp_path / "p.ckpt")(x), plain(x))
    with pytest.raises(ValueError, match="exposure_level"):
        tiny_model(exposure_level=1.5)

    image = 0.03 * torch.rand(1, 3, 200, 263, generator=torch.Generator().manual_seed(1))
    image[..., :80, :100] += 0.6  # a bright region in one corner: tiles' own means differ a lot
    enhance = Enhance(curved.model, torch.device("cpu"), self_ensemble=False)
    whole = enhance(image).clamp(0, 1)
    tiles = TileHparams(tile=128, tile_overlap=48, max_pixels=10**9)
    full_size = lambda x, pixels: enhance.whole_image_statistics(x, pixels=x.shape[-2] * x.shape[-1])  # noqa: E731
    tiled, info = enhance_one(enhance, image, tiles, shared_context=full_size)
    assert info["mode"] == "tiled" and _psnr(tiled, whole) >= 90.0
    assert _psnr(enhance_tiled(enhance.run, image, 128, 48, align=enhance.stride), whole) < 40.0
    assert curved.model.exposure.fixed_mean is None  # released after the image


def test_full_resolution_stem_embeds_the_first_level_from_full_resolution_features(tmp_path):
    """full_res_stem makes the U-Net's first level come from the full-resolution features (a 2x2
    stride-2 convolution of them) and the last stage fuse with those same features: the first level
    depends on the stem's weights, its checkpoints rebuild it, a full-resolution checkpoint from
    before the option loads without it, the option needs a full-resolution stage, and tiles still
    reproduce the whole image."""
    from model.blocks.enhancer import ResidualConv
    from model.model import load_checkpoint

    torch.manual_seed(0)
    stem = LowLightEnhancerLightning(
        tiny_model(full_res_dim=8, full_res_block="conv", full_res_stem=True, full_res_stem_blocks=1)
    ).eval()
    plain = LowLightEnhancerLightning(tiny_model(full_res_dim=8, full_res_block="conv")).eval()
    decoder = stem.model.decoder
    assert decoder.embed.body.in_channels == 8 and decoder.embed.body.stride == (2, 2)
    assert sum(isinstance(m, ResidualConv) for m in decoder.stem) == 1 and plain.model.decoder.stem is None
    x = torch.rand(1, 3, 20, 28)
    with torch.no_grad():
        before = stem(x)
        # the stem's block feeds both the first level and the last stage
        decoder.stem[1].conv2.weight.add_(0.1)
        changed = stem(x)
        decoder.stem[1].conv2.weight.sub_(0.1)
    assert (changed - before).abs().max() > 1e-3
    _save_checkpoint(stem, tmp_path / "s.ckpt")
    _save_checkpoint(plain, tmp_path / "p.ckpt", without=["full_res_stem", "full_res_stem_blocks"])
    with torch.no_grad():
        assert load_checkpoint(tmp_path / "s.ckpt").hparams.full_res_stem_blocks == 1
        torch.testing.assert_close(load_checkpoint(tmp_path / "s.ckpt")(x), stem(x))
        assert not load_checkpoint(tmp_path / "p.ckpt").hparams.full_res_stem
        torch.testing.assert_close(load_checkpoint(tmp_path / "p.ckpt")(x), plain(x))
    with pytest.raises(ValueError, match="full_res_stem needs"):
        tiny_model(full_res_dim=0, full_res_stem=True)
    with pytest.raises(ValueError, match="full_res_stem_blocks"):
        tiny_model(full_res_dim=8, full_res_stem_blocks=2)  # silently ignored without the stem

    image = 0.3 * torch.rand(1, 3, 200, 263, generator=torch.Generator().manual_seed(1))
    assert _tiled_psnr(stem.model, image, tile=128, overlap=48) >= 90.0


def test_quarter_resolution_context_is_its_own_architecture_and_tiles_exactly(tmp_path):
    """context_patch 4 runs the encoder at a quarter of the resolution (its blocks cost a quarter as
    much): any image size still comes back at its own size, its checkpoints rebuild it, a checkpoint
    from before the option loads with the half-resolution context and its old outputs, and tiles
    with the whole image's attention reproduce the whole-image output."""
    from model.model import load_checkpoint

    torch.manual_seed(0)
    quarter = LowLightEnhancerLightning(tiny_model(context_patch=4, num_resolution=1)).eval()
    plain = LowLightEnhancerLightning(tiny_model(context_patch=2)).eval()
    assert quarter.model.encoder.embed_illum.proj.stride == (4, 4) and quarter.model.stride == 4
    assert plain.model.encoder.embed_illum.proj.stride == (2, 2) and plain.model.decoder.context_up is None
    with torch.no_grad():
        for size in [(1, 1), (5, 7), (33, 18)]:
            assert quarter(torch.rand(1, 3, *size)).shape == (1, 3, *size)
    _save_checkpoint(quarter, tmp_path / "q.ckpt")
    _save_checkpoint(plain, tmp_path / "p.ckpt", without=["context_patch"])
    x = torch.rand(1, 3, 20, 28)
    with torch.no_grad():
        assert load_checkpoint(tmp_path / "q.ckpt").hparams.context_patch == 4
        torch.testing.assert_close(load_checkpoint(tmp_path / "q.ckpt")(x), quarter(x))
        assert load_checkpoint(tmp_path / "p.ckpt").hparams.context_patch == 2
        torch.testing.assert_close(load_checkpoint(tmp_path / "p.ckpt")(x), plain(x))
    with pytest.raises(ValueError, match="context_patch"):
        tiny_model(context_patch=8)

    quarter = LowLightEnhancerLightning(tiny_model(context_patch=4)).eval()
    image = 0.3 * torch.rand(1, 3, 200, 263, generator=torch.Generator().manual_seed(1))
    assert _tiled_psnr(quarter.model, image, tile=128, overlap=48) >= 90.0


def test_output_gain_lights_up_the_image_and_is_its_own_architecture(tmp_path):
    """output_gain makes the output ``image * (1 + gain) + residual``: a fresh model computes what the
    residual-only model with the same weights computes plus ``output_gain_init`` times the image, less
    that gain times a typical dark input's mean; a constant gain scales the image into the output,
    every gain weight learns, its checkpoints rebuild it, one from before the option loads without it,
    and tiles still reproduce the whole image."""
    from model.blocks.enhancer import INPUT_STATS, OUTPUT_BIAS_INIT
    from model.model import load_checkpoint

    torch.manual_seed(0)
    lit = LowLightEnhancerLightning(tiny_model(output_gain=True, output_gain_init=2.0)).eval()
    plain = LowLightEnhancerLightning(tiny_model()).eval()
    plain.load_state_dict({k: v for k, v in lit.state_dict().items() if ".gain." not in k})
    torch.nn.init.constant_(plain.model.decoder.out.bias, OUTPUT_BIAS_INIT)  # the residual-only start
    x = 0.2 * torch.rand(2, 3, 20, 28)
    with torch.no_grad():
        torch.testing.assert_close(lit(x), plain(x) + 2.0 * (x - INPUT_STATS["image"][0]))
        lit.model.decoder.gain.bias.fill_(3.0)  # gain 3 everywhere: the output gains 3 * image
        torch.testing.assert_close(lit(x), plain(x) + 3.0 * x - 2.0 * INPUT_STATS["image"][0])
    lit.train()
    lit(x).square().mean().backward()
    assert lit.model.decoder.gain.weight.grad.abs().amin() > 0  # zero weights still learn
    lit.eval()

    _save_checkpoint(lit, tmp_path / "g.ckpt")
    _save_checkpoint(plain, tmp_path / "p.ckpt", without=["output_gain", "output_gain_init"])
    with torch.no_grad():
        assert load_checkpoint(tmp_path / "g.ckpt").hparams.output_gain
        torch.testing.assert_close(load_checkpoint(tmp_path / "g.ckpt")(x), lit(x))
        assert not load_checkpoint(tmp_path / "p.ckpt").hparams.output_gain
        torch.testing.assert_close(load_checkpoint(tmp_path / "p.ckpt")(x), plain(x))
    with pytest.raises(ValueError, match="output_gain_init"):
        tiny_model(output_gain=True, output_gain_init=3.0)  # the residual would start below zero
    with pytest.raises(ValueError, match="output_gain_init"):
        tiny_model(output_gain_init=1.0)  # silently ignored without output_gain

    torch.nn.init.normal_(lit.model.decoder.gain.weight, std=0.1)  # a gain that varies in space
    image = 0.3 * torch.rand(1, 3, 200, 263, generator=torch.Generator().manual_seed(1))
    assert _tiled_psnr(lit.model, image, tile=128, overlap=48) >= 90.0


def test_temperature_init_sets_where_every_attention_head_starts(tmp_path):
    """temperature_init is where every attention head's temperature starts (encoder, decoder and a
    full-resolution transformer stage alike); it is a starting point, not architecture: a checkpoint
    keeps its trained temperatures and value, and one from before the option loads with 1.0."""
    from model.model import check_compatible, load_checkpoint, read_checkpoint

    torch.manual_seed(0)
    sharp = LowLightEnhancerLightning(
        tiny_model(temperature_init=4.0, full_res_dim=8, full_res_block="transformer")
    )
    heads = [m.temperature for m in sharp.modules() if isinstance(m, ChannelAttention)]
    assert any(t is sharp.model.decoder.full_block.attn.temperature for t in heads)
    assert len(heads) > 5 and all(bool((t == 4.0).all()) for t in heads)
    default = LowLightEnhancerLightning(tiny_model())
    assert all(
        bool((m.temperature == 1.0).all()) for m in default.modules() if isinstance(m, ChannelAttention)
    )
    with pytest.raises(ValueError, match="temperature_init"):
        tiny_model(temperature_init=0.0)

    with torch.no_grad():
        heads[0].fill_(2.5)  # as if trained
    _save_checkpoint(sharp.eval(), tmp_path / "s.ckpt")
    _save_checkpoint(default.eval(), tmp_path / "d.ckpt", without=["temperature_init"])
    loaded = load_checkpoint(tmp_path / "s.ckpt")
    assert (
        loaded.hparams.temperature_init == 4.0
        and float(loaded.model.encoder.self_illum.attn.temperature[0]) == 2.5
    )
    assert load_checkpoint(tmp_path / "d.ckpt").hparams.temperature_init == 1.0
    # fine-tuning a checkpoint with another starting temperature is allowed: the weights fit
    other = LowLightEnhancerLightning(
        tiny_model(temperature_init=1.0, full_res_dim=8, full_res_block="transformer")
    )
    check_compatible(other, read_checkpoint(tmp_path / "s.ckpt"), "s.ckpt")


def test_zero_init_residuals_start_every_block_as_the_identity_and_still_train_every_weight():
    """zero_init_residuals starts every residual branch at zero (transformer blocks and the
    full-resolution pair), so each block is the identity at first; within a few optimizer steps
    (one per zero branch on the way to the output) every parameter receives a gradient, so nothing
    stays frozen at zero."""
    from model.blocks.attention import TransformerBlock
    from model.blocks.enhancer import ResidualConv

    torch.manual_seed(0)
    model = tiny_enhancer(zero_init_residuals=True, full_res_dim=8)
    blocks = [m for m in model.modules() if isinstance(m, TransformerBlock | ResidualConv)]
    assert any(isinstance(m, ResidualConv) for m in blocks) and len(blocks) > 5
    x = torch.randn(2, 8, 12, 12)
    with torch.no_grad():
        for block in blocks:
            if isinstance(block, ResidualConv):
                torch.testing.assert_close(block(x), x)
            else:
                dim = block.norm_attn.weight.numel()
                y = torch.randn(2, dim, 12, 12)
                inputs = (y, torch.randn(2, dim, 12, 12)) if block.norm_context is not None else (y,)
                torch.testing.assert_close(block(*inputs), y)
    assert not any(bool((m.attn.proj.weight != 0).any()) for m in blocks if isinstance(m, TransformerBlock))

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    image, target = 0.2 * torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    for _ in range(4):  # the encoder's queries sit behind three zero branches
        optimizer.zero_grad()
        F.l1_loss(model(image), target).backward()
        optimizer.step()
    missing = [
        n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())
    ]
    assert not missing, missing
