"""ONNX export and the runtimes that run it: `exporter` (detect.onnx + mask.onnx + model.json,
verified), `graphs` (the two steps of inference as exportable modules), `end_to_end` (with
--end-to-end: image -> segmentation in one graph), `sessions` (ONNX Runtime and OpenVINO behind
the torch model's detect / predict_masks) and `cache` (exports built on first use beside torch
hub's cache). onnx, onnxruntime and openvino: the `export` extra."""
