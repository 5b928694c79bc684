"""Inference, once: a finished run found and loaded (runs), its folds as PyTorch models (torch_folds) or exported
ONNX graphs (onnx_folds), and the fold ensemble with window aggregation (ensemble). train's test predictions,
`textclf predict` and `textclf export` all go through here, so every path predicts the same way."""
