"""PyTorch -> ONNX: stage graphs, the custom-op node, simplification, parity checks."""
