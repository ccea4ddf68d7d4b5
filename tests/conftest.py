"""Suite-wide settings: CPU only, two threads, no metric downloads (CI is offline)."""

import os

import torch

os.environ.setdefault("ILLRECNET_IQA_DOWNLOAD", "0")
torch.set_num_threads(2)
