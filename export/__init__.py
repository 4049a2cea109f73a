"""Export of the encoder, generator and mapping to ONNX and TensorRT, and Triton Inference Server repositories."""
