"""Low-bit networks: quantization-aware training (``method: qat``) and ONNX export."""
