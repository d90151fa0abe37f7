"""Running a bundle on product images: decoding and preprocessing (`imaging`) and the batched tagging engine
(`engine`) that turns images into attribute values with confidences and boxes, on an inference backend
(`backends`: `torch_runner`, or `onnx_model` with the bundle exported by `onnx_export`).

The serving path (imaging, engine, backends, onnx_model) never imports torch at module level: with the
onnxruntime backend the daemon runs without it. Only `torch_runner` and `onnx_export` import torch.

Must not: train, write to a database or read configuration; the daemon wires it.
"""
