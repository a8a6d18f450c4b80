"""The policy's encoders run by ONNX Runtime, for the policy runner on a CPU.

A re-plan's cost is nearly all encoders (ResNet18 on the new frame, the AVID Conv2D on the clip); on one
thread here ONNX Runtime runs them in about 0.65x the CPU time of PyTorch in channels-last
(docs/bench-async-policy.md). The encoders are exported from the loaded model in memory when the runner is
made (a few seconds for the paper preset; nothing is read from or written to disk), each with the same
pre-processing as AudioVisualPolicy.encode_frames / encode_audio; fusion and head stay in PyTorch.
Optional: the `onnx` extra (onnxruntime, and onnx, which torch's exporter needs).

ONNX Runtime's official Linux builds collect telemetry and upload it (1DS, with a device id under ~/.cache
and a session file in $TMPDIR); importing this module sets ORT_DISABLE_TELEMETRY=1 (before onnxruntime is imported),
which turns all of that off for the process (nothing connects anywhere, nothing is written).
"""

from __future__ import annotations

import importlib.util
import io
import os
import warnings

import numpy as np
import torch
from torch import nn

from htouch.errors import HtouchError
from htouch.training.model import AudioVisualPolicy

# Read once, when onnxruntime initialises: set on import of this module (which the policy runner imports), so
# that it is set before anything in the process imports onnxruntime (module docstring).
os.environ["ORT_DISABLE_TELEMETRY"] = "1"


def available() -> bool:
    """Are onnxruntime and onnx installed (`pip install 'htouch[onnx]'`)?"""
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


class _Frames(nn.Module):
    def __init__(self, policy: AudioVisualPolicy):
        super().__init__()
        self.policy = policy

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.policy.encode_frames(frames)


class _Audio(_Frames):
    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        return self.policy.encode_audio(spectrogram)


class OnnxEncoders:
    """encode_frames / encode_audio of `policy` (taking and returning torch tensors, as the policy's do), run
    by ONNX Runtime with `threads` intra-op threads. `spectrogram_shape` is the shape of the spectrogram batch the
    runner passes (fixed: one clip per re-plan); frames may come 1 to n at a time."""

    def __init__(self, policy: AudioVisualPolicy, image_size: int, spectrogram_shape: tuple[int, ...] | None,
                 threads: int = 1):
        if not available():
            raise HtouchError("ONNX Runtime encoders need the onnx extra: pip install 'htouch[onnx]' "
                              "(onnxruntime and onnx)")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = max(1, int(threads))
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        policy = policy.eval()

        def session(module: nn.Module, example: torch.Tensor, dynamic_batch: bool) -> ort.InferenceSession:
            buffer = io.BytesIO()
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notices
                torch.onnx.export(module, (example,), buffer, input_names=["x"], output_names=["y"],
                                  dynamic_axes={"x": {0: "n"}, "y": {0: "n"}} if dynamic_batch else None,
                                  dynamo=False)
            return ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])

        self._frames = session(_Frames(policy).eval(), torch.zeros(2, 3, image_size, image_size), True)
        self._audio = None
        if policy.audio_encoder is not None:
            if spectrogram_shape is None:
                raise HtouchError("a policy that hears needs the spectrogram shape for its ONNX encoder")
            self._audio = session(_Audio(policy).eval(), torch.zeros(spectrogram_shape), False)

    @staticmethod
    def _run(sess, x: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(sess.run(None, {"x": x})[0])

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) in [0, 1] -> (N, width)."""
        return self._run(self._frames, frames)

    def encode_audio(self, spectrogram: torch.Tensor | None) -> torch.Tensor | None:
        """The runner's spectrogram batch -> (1, width); None for a policy that does not hear."""
        if self._audio is None:
            return None
        return self._run(self._audio, spectrogram)
