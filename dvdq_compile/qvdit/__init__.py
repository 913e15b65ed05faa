"""Recipe ``qvdit``: Q-VDiT's Token-aware Quantization Estimator (TQE) and Temporal Maintenance Distillation (TMD).

Feng et al., "Q-VDiT: Towards Accurate Quantization and Distillation of Video-Generation Diffusion Transformers",
ICML 2025 (docs/algorithms.md §8). One responsibility per file:

- ``tqe``: :class:`TQELinear` (learned low-rank weight offset before quantization + rank-1 FP correction after it,
  straight-through quantizers) and its config;
- ``tmd``: the distillation loss (output MSE + λ·inter-frame relation KL);
- ``swap``: which linears of a model get TQE and at which bits (faithful: MLP kept at W8A8), install/extract;
- ``train``: the distillation loop on the zoo model and its CLI (``python -m dvdq_compile.qvdit.train``);
- ``artifact``: the learned tensors as safetensors + JSON manifest, refused for another model;
- ``evaluate``: eager fake-quant sampling runs against full precision (``bench/results/qvdit_cpu.*``).
"""
