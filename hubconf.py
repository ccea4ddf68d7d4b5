"""torch.hub entry point::

    model = torch.hub.load("<owner>/IllRecNet", "illrecnet", pretrained=True)    # from GitHub
    model = torch.hub.load("path/to/IllRecNet", "illrecnet", source="local")     # from a clone
    enhanced = model(dark)  # (B, 3, H, W) in [0, 1] -> the same shape, any H and W

``model`` is the enhancer (a plain ``nn.Module``) in eval mode.
"""

dependencies = ["torch", "lightning", "torchmetrics", "torchvision", "numpy"]


def illrecnet(pretrained: bool = True, checkpoint_path: str | None = None, **model_fields):
    """IllRecNet's enhancer.

    Args:
        pretrained: load the shipped starter model (checkpoints/starter.ckpt, checked against its
            sha256); False builds a randomly initialised model from ``model_fields``
            (``embed_dim=...``, see utils/hparams.py ModelHparams).
        checkpoint_path: load this checkpoint instead of the starter model.
    """
    from model.blocks.enhancer import Enhancer
    from model.model import load_checkpoint, resolve_checkpoint
    from utils.hparams import ModelHparams

    if pretrained or checkpoint_path:
        if model_fields:
            raise ValueError(f"a pretrained model has its own architecture; drop {sorted(model_fields)}")
        return load_checkpoint(resolve_checkpoint(checkpoint_path)).model.eval()
    return Enhancer(ModelHparams(**model_fields)).eval()
