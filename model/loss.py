"""Training losses: a weighted sum of mean absolute error and mean squared error."""

import torch.nn.functional as F
from torch import Tensor, nn


class MaeMseLoss(nn.Module):
    """``total = mae_weight * L1 + mse_weight * L2``; returns all three so each can be logged."""

    def __init__(self, mae_weight: float = 1.0, mse_weight: float = 1.0) -> None:
        super().__init__()
        if mae_weight < 0 or mse_weight < 0 or mae_weight + mse_weight == 0:
            raise ValueError(f"loss weights must be >= 0 and not both 0, got {mae_weight}, {mse_weight}")
        self.mae_weight = mae_weight
        self.mse_weight = mse_weight

    def forward(self, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        mae = F.l1_loss(pred, target)
        mse = F.mse_loss(pred, target)
        return {"mae": mae, "mse": mse, "total": self.mae_weight * mae + self.mse_weight * mse}
