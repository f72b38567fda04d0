"""Megatron's ``--profile``: steps ``[--profile-step-start, --profile-step-end)`` on ``--profile-ranks``,
recorded by torch.profiler (``--use-pytorch-profiler``, traces for TensorBoard or Perfetto) or by an outside
nsys started with ``--capture-range=cudaProfilerApi`` (the CUDA profiler API marks the steps)."""

from __future__ import annotations

import argparse
import os

import torch


def trace_dir(args: argparse.Namespace) -> str:
    """Where torch.profiler traces go: ``--tensorboard-dir`` (as Megatron), else a ``profile/`` beside the
    checkpoints or the ``--log-jsonl`` file."""
    if args.tensorboard_dir:
        return args.tensorboard_dir
    base = args.save or os.path.dirname(os.path.abspath(args.log_jsonl))
    return os.path.join(base, "profile")


class StepProfiler:
    """Records steps ``--profile-step-start`` to ``--profile-step-end - 1`` (0-based) on this rank."""

    def __init__(self, args: argparse.Namespace, rank: int) -> None:
        self.enabled = args.profile and rank in args.profile_ranks
        self.start, self.end = args.profile_step_start, args.profile_step_end
        self.torch_profiler = None
        self.nvtx = None
        self.recording = False
        if self.enabled and args.use_pytorch_profiler:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.torch_profiler = torch.profiler.profile(
                activities=activities,
                on_trace_ready=torch.profiler.tensorboard_trace_handler(trace_dir(args)),
                record_shapes=True,
            )

    def before_step(self, step: int) -> None:
        """Start recording when ``step`` is the first profiled one."""
        if not self.enabled or step != self.start:
            return
        self.recording = True
        if self.torch_profiler is not None:
            self.torch_profiler.start()
        else:
            torch.cuda.cudart().cudaProfilerStart()
            self.nvtx = torch.autograd.profiler.emit_nvtx(record_shapes=True)
            self.nvtx.__enter__()

    def after_step(self, step: int) -> None:
        """Stop recording (and write the trace) after the last profiled step."""
        if self.enabled and step == self.end - 1:
            self.stop()

    def stop(self) -> None:
        """Stop recording if it runs (also when training ends inside the profiled range)."""
        if not self.recording:
            return
        self.recording = self.enabled = False
        if self.torch_profiler is not None:
            self.torch_profiler.stop()
        else:
            self.nvtx.__exit__(None, None, None)
            torch.cuda.cudart().cudaProfilerStop()
