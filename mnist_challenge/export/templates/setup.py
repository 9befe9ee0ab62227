# ruff: noqa: F401 -- the notebook's imports, for every later cell
# --- cell ---
# Only torch, torchvision, torchsummary and matplotlib are needed (Colab has all but torchsummary).
import gzip
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

try:
    import torchsummary
except ImportError:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "torchsummary"])
    import torchsummary

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SMOKE = os.environ.get("KIT_NOTEBOOK_SMOKE") == "1"  # one epoch on 2,000 images: a check that it runs
GPU_NAME = f" ({torch.cuda.get_device_name()})" if DEVICE.type == "cuda" else ""
print(f"torch {torch.__version__}, device {DEVICE}{GPU_NAME}")
