"""Figures the seed studies reported (``/work/shared/seeds``, summarised in EXPERIMENTS.md),
held once so that notebooks and tests put them beside lowbit's own measurements
instead of restating them. Each table is a list of row dicts; ``source`` names the
place in the seed.

- ``S0_ACCURACY``: seed 000, conclusion table - test accuracy (%) on MNIST after 20
  epochs per number format, rows named by the ``lb.models`` network that stands for
  each (the seed's small ResNet with identity blocks and batch norm by ``resnet20``).
  The Pure CNN row (43%) is a defect of that study.
- ``S2_SUMMARY``: seed 002, Tables 5.1 and 6.1 - the Larq model summaries of the binary
  AlexNet and GoogLeNet (cats vs dogs, 3 channels).
- ``S2_ACCURACY``: seed 002, Tables 5.2 and 6.2 - optimal validation accuracy (%) and
  losses per version (binary, 8-bit, full).
- ``S3_PRECISION``: seed 003, precision table - NumPy CNN, batch 100, 2,000 training /
  500 test MNIST images, 10 epochs: total time and accuracy at epochs 1, 5 and 10.
- ``S4_KERNEL_CLIPPING``, ``S4_KERNEL_BITS``, ``S4_STATIC``, ``S4_PROGRESSIVE``: seed 004,
  SqueezeNet v1.1 on ImageNet (fp32 top-1 51%, ``base_accuracy``): kernel clipping (Table
  4), kernel resolution off- and on-model (Tables 5-6), static w-i-o quantization (Table
  9) and progressive quantization (Tables 10, 12, 13, 14), top-1 %.
"""
from __future__ import annotations

__all__ = ["S0_ACCURACY", "S2_SUMMARY", "S2_ACCURACY", "S3_PRECISION", "S3_SETTINGS", "S4_KERNEL_CLIPPING",
           "S4_KERNEL_BITS", "S4_STATIC", "S4_PROGRESSIVE"]

S0_ACCURACY = {
    "source": "seed 000, section 7 (conclusion table); MNIST, 20 epochs",
    "columns": {"fixed": "fixed point", "fp32": "32-bit float", "fp16": "16-bit float"},
    "rows": [
        {"model": "pure_cnn", "fixed": 43.32, "fp32": 43.32, "fp16": 43.39},
        {"model": "alexnet_mnist", "fixed": 98.0, "fp32": 98.4, "fp16": 98.6},
        {"model": "lenet", "fixed": 99.2, "fp32": 99.6, "fp16": 99.4},
        {"model": "vgg_mnist", "fixed": 99.38, "fp32": 99.2, "fp16": 99.2},
        {"model": "resnet20", "fixed": 98.8, "fp32": 98.58, "fp16": 98.76},
    ],
}

S2_SUMMARY = {
    "source": "seed 002, Tables 5.1 (AlexNet) and 6.1 (GoogLeNet), binary models, Larq summary",
    "rows": [
        {"model": "alexnet", "params": 143_000_000, "binary_mb": 17.14, "float32_mb": 546.39,
         "macs_32bit": 105_415_200, "macs_1bit": 1_110_687_744},
        {"model": "googlenet", "params": 5_980_000, "binary_mb": 1.17, "float32_mb": 22.80,
         "macs_32bit": 494_889_728, "macs_1bit": 1_254_041_856},
    ],
}

S2_ACCURACY = {
    "source": "seed 002, Tables 5.2 (AlexNet) and 6.2 (GoogLeNet); Kaggle cats vs dogs, "
              "8,005 training / 2,023 validation images",
    "rows": [
        {"model": "alexnet", "precision": "binary", "train_acc": 48.44, "val_acc": 50.31, "train_loss": 1.100,
         "val_loss": 6.95},
        {"model": "alexnet", "precision": "8-bit", "train_acc": 46.88, "val_acc": 53.22, "train_loss": 9.93,
         "val_loss": 4.74},
        {"model": "alexnet", "precision": "full", "train_acc": 51.56, "val_acc": 57.50, "train_loss": 0.7144,
         "val_loss": 0.6842},
        {"model": "googlenet", "precision": "binary", "train_acc": 51.56, "val_acc": 51.56, "train_loss": 0.8481,
         "val_loss": 0.6934},
        {"model": "googlenet", "precision": "8-bit", "train_acc": 54.69, "val_acc": 53.44, "train_loss": 0.7434,
         "val_loss": 0.7876},
        {"model": "googlenet", "precision": "full", "train_acc": 56.25, "val_acc": 54.92, "train_loss": 0.6977,
         "val_loss": 0.6892},
    ],
}

S3_SETTINGS = {"batch_size": 100, "n_train": 2000, "n_test": 500, "epochs": 10, "learning_rate": 0.01}

S3_PRECISION = {
    "source": "seed 003, 'Precision Testing' table; NumPy CNN on MNIST, batch 100, 2,000 / 500 images, 10 epochs",
    "rows": [
        {"precision": "fw32bw32", "minutes": 61.89,
         "epoch1": {"loss": 4.89, "acc": 0.42, "test_loss": 1.17, "test_acc": 0.61},
         "epoch5": {"loss": 0.70, "acc": 0.78, "test_loss": 0.78, "test_acc": 0.82},
         "epoch10": {"loss": 0.58, "acc": 0.82, "test_loss": 0.73, "test_acc": 0.74}},
        {"precision": "fw16bw32", "minutes": 62.27,
         "epoch1": {"loss": 4.46, "acc": 0.40, "test_loss": 1.04, "test_acc": 0.68},
         "epoch5": {"loss": 0.73, "acc": 0.77, "test_loss": 0.73, "test_acc": 0.83},
         "epoch10": {"loss": 0.54, "acc": 0.84, "test_loss": 0.64, "test_acc": 0.77}},
        {"precision": "fw16bw16", "minutes": 57.02,
         "epoch1": {"loss": 4.00, "acc": 0.45, "test_loss": 0.96, "test_acc": 0.72},
         "epoch5": {"loss": 0.67, "acc": 0.79, "test_loss": 0.60, "test_acc": 0.85},
         "epoch10": {"loss": 0.51, "acc": 0.83, "test_loss": 0.51, "test_acc": 0.86}},
    ],
}

S4_KERNEL_CLIPPING = {
    "source": "seed 004, Table 4; kernels clipped at the MSB of each percentile, 32-bit resolution",
    "base_accuracy": 51.0,
    "rows": [
        {"percentile": 99.99, "msb": 0, "accuracy": 49.1},
        {"percentile": 99.9, "msb": -1, "accuracy": 16.4},
        {"percentile": 98, "msb": -2, "accuracy": 0.17},
    ],
}

S4_KERNEL_BITS = {
    "source": "seed 004, Tables 5 (off-model) and 6 (on-model); kernel bits at MSB 0",
    "base_accuracy": 51.0,
    "rows": [
        {"bits": 16, "off_model": 48.2, "on_model": 49.3},
        {"bits": 8, "off_model": 7.16, "on_model": 7.3},
        {"bits": 4, "off_model": 0.14, "on_model": 0.11},
    ],
}

S4_STATIC = {
    "source": "seed 004, Table 9; static on-model w-i-o, MSB 0 (kernel) and 9 (input, output)",
    "base_accuracy": 51.0,
    "rows": [
        {"w-i-o": "8-6-6", "accuracy": 0.08},
        {"w-i-o": "8-8-8", "accuracy": 0.25},
        {"w-i-o": "16-8-8", "accuracy": 43.9},
        {"w-i-o": "16-16-16", "accuracy": 47.59},
    ],
}

S4_PROGRESSIVE = {
    "source": "seed 004, Tables 10 and 12 (Quantize-and-Lock, generic and 98% per-layer MSB), 13 (QaL vs "
              "Quantize-while-Train, custom MSB, 10 epochs per layer) and 14 (QwT, 100 epochs per layer)",
    "base_accuracy": 51.0,
    "rows": [
        {"w-i-o": "8-6-6", "strategy": "quantize_and_lock", "msb": "generic", "epochs_per_layer": 10, "accuracy": 0.41},
        {"w-i-o": "8-6-6", "strategy": "quantize_and_lock", "msb": "generic", "epochs_per_layer": 100,
         "accuracy": 6.28},
        {"w-i-o": "8-8-8", "strategy": "quantize_and_lock", "msb": "generic", "epochs_per_layer": 10, "accuracy": 36.3},
        {"w-i-o": "8-8-8", "strategy": "quantize_and_lock", "msb": "generic", "epochs_per_layer": 100,
         "accuracy": 44.9},
        {"w-i-o": "8-6-6", "strategy": "quantize_and_lock", "msb": "98%", "epochs_per_layer": 100, "accuracy": 30.31},
        {"w-i-o": "8-8-8", "strategy": "quantize_and_lock", "msb": "98%", "epochs_per_layer": 100, "accuracy": 45.6},
        {"w-i-o": "8-6-6", "strategy": "quantize_and_lock", "msb": "98%", "epochs_per_layer": 10, "accuracy": 3.97},
        {"w-i-o": "6-6-6", "strategy": "quantize_and_lock", "msb": "98%", "epochs_per_layer": 10, "accuracy": 0.15},
        {"w-i-o": "4-4-4", "strategy": "quantize_and_lock", "msb": "98%", "epochs_per_layer": 10, "accuracy": 0.1},
        {"w-i-o": "8-6-6", "strategy": "quantize_while_train", "msb": "98%", "epochs_per_layer": 10,
         "accuracy": 44.5},
        {"w-i-o": "6-6-6", "strategy": "quantize_while_train", "msb": "98%", "epochs_per_layer": 10,
         "accuracy": 37.16},
        {"w-i-o": "4-4-4", "strategy": "quantize_while_train", "msb": "98%", "epochs_per_layer": 10,
         "accuracy": 0.14},
        {"w-i-o": "6-6-6", "strategy": "quantize_while_train", "msb": "98%", "epochs_per_layer": 100,
         "accuracy": 41.30},
        {"w-i-o": "4-4-4", "strategy": "quantize_while_train", "msb": "98%", "epochs_per_layer": 100,
         "accuracy": 0.19},
    ],
}
