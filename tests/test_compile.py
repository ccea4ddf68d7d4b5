"""``--compile``: torch.compile gives the eager results, keeps checkpoints, and new sizes reuse graphs.

The small enhancer keeps inductor's compile time (cold cache) to seconds per graph on two cores.
"""

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

from engine.engine import LightningEngine
from model.blocks.enhancer import Enhancer
from model.model import LowLightEnhancerLightning
from tests.conftest import tiny_model
from tools.speed_report import compile_for_training

torch.set_num_threads(2)


def small_pair(trainable_separation: bool = False) -> tuple[Enhancer, Enhancer]:
    """The same small enhancer twice (same weights): one to compile, one eager reference."""
    torch.manual_seed(0)
    hp = tiny_model(mlp_ratio=1.0, num_resolution=2)
    eager = Enhancer(hp, trainable_separation)
    compiled = Enhancer(hp, trainable_separation)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile()
    return compiled, eager


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.mark.slow
def test_compiled_training_step_matches_eager():
    """With the trainable separation (the second session of train.py), so the backward graph also
    runs through the Gaussian blur: with a padded blur, torch 2.14's inductor failed there."""
    compiled, eager = small_pair(trainable_separation=True)
    low, high = torch.rand(2, 3, 48, 48), torch.rand(2, 3, 48, 48)
    results = []
    for model in (compiled, eager):
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        loss = F.l1_loss(model(low), high) + F.mse_loss(model(low), high)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        optimizer.step()
        results.append((loss.detach(), grads, model(low).detach()))
    (loss_c, grads_c, after_c), (loss_e, grads_e, after_e) = results
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-4, atol=1e-5)
    assert grads_c.keys() == grads_e.keys()
    assert len(grads_e) == sum(p.requires_grad for p in eager.parameters())
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], rtol=1e-3, atol=1e-4, msg=name)
    torch.testing.assert_close(after_c, after_e, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_speed_report_compiles_training_after_dynamic_inference():
    """``tools.speed_report --compile true`` times inference at two sizes (height and width become
    symbolic) before the training step. Compiled that way, inductor failed on the backward; the
    report recompiles with static sizes (``compile_for_training``), and the step matches eager."""
    compiled, eager = small_pair()
    compiled.eval()
    with torch.no_grad():
        for h, w in [(40, 48), (56, 72)]:
            compiled(torch.rand(1, 3, h, w))
    compile_for_training([compiled])
    low, high = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    losses = []
    for model in (compiled, eager):
        model.train()
        loss = F.l1_loss(model(low), high)
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        losses.append((loss.detach(), grads))
    (loss_c, grads_c), (loss_e, grads_e) = losses
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-4, atol=1e-5)
    assert grads_c.keys() == grads_e.keys() and grads_e
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], rtol=1e-3, atol=1e-4, msg=name)


@pytest.mark.slow
def test_compiled_inference_matches_eager_and_new_sizes_reuse_the_dynamic_graphs():
    """The first size compiles a static graph; the next sizes compile at most two graphs with
    symbolic height and width (a layout check branches on whether the padding to the network's
    stride is zero), and every later size (measured up to 1080p) reuses them. Below about 256x256,
    convolution-backend size thresholds can add a graph or two more (measured)."""
    compiled, eager = small_pair()
    compiled.eval(), eager.eval()
    graphs = []
    with torch.no_grad():
        for h, w in [(400, 600), (411, 603), (480, 640), (397, 521), (520, 389), (333, 777), (720, 1280)]:
            x = torch.rand(1, 3, h, w)
            out = compiled(x)
            assert out.shape == x.shape
            torch.testing.assert_close(out, eager(x), rtol=1e-4, atol=1e-5)
            graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[2] <= 3, graphs
    assert graphs[-1] == graphs[2], f"sizes after the third compiled again: {graphs}"


def test_engine_compiles_the_enhancer_in_place_and_checkpoints_keep_their_keys():
    module = LowLightEnhancerLightning(tiny_model(num_resolution=1))
    keys = list(module.state_dict())
    engine = LightningEngine(accelerator="cpu", compile=True)
    assert engine.compiled(module) is module
    compiled_call = module.model._compiled_call_impl
    assert compiled_call is not None
    engine.compiled(module)  # a second stage does not wrap it twice
    assert module.model._compiled_call_impl is compiled_call
    assert list(module.state_dict()) == keys

    plain = LowLightEnhancerLightning(tiny_model(num_resolution=1))
    LightningEngine(accelerator="cpu").compiled(plain)
    assert getattr(plain.model, "_compiled_call_impl", None) is None


def test_engine_from_hparams_takes_the_runtime_fields():
    from train import TrainHparams

    hp = TrainHparams(
        accelerator="cpu",
        precision="bf16-mixed",
        seed=7,
        compile=True,
        compile_mode="reduce-overhead",
        deterministic=True,
    )
    engine = LightningEngine.from_hparams(hp, devices=1)
    assert (engine.accelerator, engine.precision, engine.seed) == ("cpu", "bf16-mixed", 7)
    assert engine.compile and engine.deterministic and engine.devices == 1
    assert engine.compile_mode == "reduce-overhead"


@pytest.mark.parametrize(
    "compile, mode, message",
    [
        (True, "fast", "compile_mode must be one of"),
        (False, "reduce-overhead", "compile_mode 'reduce-overhead' needs --compile true"),
    ],
)
def test_a_compile_mode_that_cannot_apply_is_refused(compile, mode, message):
    from train import TrainHparams

    with pytest.raises(ValueError, match=message):
        TrainHparams(accelerator="cpu", compile=compile, compile_mode=mode)
    with pytest.raises(ValueError, match=message):
        LightningEngine(accelerator="cpu", compile=compile, compile_mode=mode)


@pytest.mark.parametrize("training", [False, True])
def test_engine_passes_the_compile_mode_to_torch_compile(monkeypatch, training):
    """``--compile_mode reduce-overhead`` (CUDA graphs on a GPU) reaches torch.compile, with static
    sizes for training and dynamo's automatic dynamic sizes otherwise."""
    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: calls.append(kwargs) or fn)
    module = LowLightEnhancerLightning(tiny_model(num_resolution=1))
    engine = LightningEngine(accelerator="cpu", compile=True, compile_mode="reduce-overhead")
    engine.compiled(module, training)
    assert calls == [{"dynamic": False if training else None, "mode": "reduce-overhead"}]


@pytest.mark.slow
def test_reduce_overhead_mode_runs_on_a_cpu_and_matches_eager():
    """On a CPU the CUDA graphs of reduce-overhead do not apply; the compiled enhancer still runs."""
    module = LowLightEnhancerLightning(tiny_model(mlp_ratio=1.0, num_resolution=2))
    eager = LowLightEnhancerLightning(tiny_model(mlp_ratio=1.0, num_resolution=2))
    eager.load_state_dict(module.state_dict())
    LightningEngine(accelerator="cpu", compile=True, compile_mode="reduce-overhead").compiled(module)
    module.eval(), eager.eval()
    x = torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(module(x), eager(x), rtol=1e-4, atol=1e-5)
