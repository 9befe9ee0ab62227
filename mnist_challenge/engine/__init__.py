"""How a network is trained: MNIST as tensors (``data``), batched augmentation (``augment``), the training
loop (``train``), its fast layers and C kernels (``fast``, ``fused``, ``native``, ``native.c``), the weight
average (``ema``) and the evaluation copy (``inference``). Depends on ``common`` and ``architecture``."""
