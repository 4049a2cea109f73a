"""Export of the encoder, generator and mapping to ONNX and TensorRT, and Triton Inference Server repositories.

Modules: `onnx_export` (export_onnx, verify_onnx), `tensorrt_build` (build_engines), `triton_repo`
(write_triton_repo), `cli` (the `alae-rt export` subcommand). The backends that run the results live in the core
(`alae_rt.backends.onnxruntime`, `alae_rt.backends.tensorrt`) and share its file contract (`alae_rt.exported`).
Nothing heavy is imported here: the CLI loads this package to build its parser.

The top-level `export/` folder is a link to this one (pyproject.toml lists the package).
"""
