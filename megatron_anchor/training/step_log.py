"""The training log (rank 0): a line per ``--log-interval`` on stdout with values averaged over the interval,
the same values as JSON lines (``--log-jsonl``), and scalars under Megatron-LM's tag names in TensorBoard
(``--tensorboard-dir``) and Weights & Biases (``--wandb-project``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from dataclasses import dataclass

from megatron_anchor.training.metrics import readable, readable_duration

# Record key -> Megatron-LM's TensorBoard / W&B tag. TensorBoard also gets "<tag> vs samples" for the
# tags in VS_SAMPLES (x axis: consumed samples), as Megatron-LM writes them.
MEGATRON_TAGS = {
    "loss": "lm loss",
    "lr": "learning-rate",
    "grad_norm": "grad-norm",
    "global_batch_size": "batch-size",
    "iteration_time_s": "iteration-time",
    "tflops_per_gpu": "throughput",
    "tokens_per_s": "tokens-per-second",
    "mfu": "mfu",
    "mem_bytes": "mem-max-allocated-bytes",
    "consumed_samples": "samples vs steps",
    "eval_loss": "lm loss validation",
    "eval_ppl": "lm loss validation ppl",
}
VS_SAMPLES = (
    "lm loss",
    "learning-rate",
    "grad-norm",
    "batch-size",
    "lm loss validation",
    "lm loss validation ppl",
)


def megatron_scalars(record: dict) -> dict[str, float]:
    """The record's numeric values under Megatron's tags (memory in bytes, as Megatron logs it)."""
    values = dict(record)
    if values.get("mem_gib") is not None:
        values["mem_bytes"] = values["mem_gib"] * 2**30
    return {
        tag: float(values[key])
        for key, tag in MEGATRON_TAGS.items()
        if isinstance(values.get(key), (int, float)) and not isinstance(values.get(key), bool)
    }


@dataclass
class LogWindow:
    """What the steps since the last log line add up to."""

    steps: int = 0
    loss_sum: float = 0.0
    seconds: float = 0.0
    flops: float = 0.0

    def add(self, loss: float, seconds: float, flops: float) -> None:
        """Count one finished step."""
        self.steps += 1
        self.loss_sum += loss
        self.seconds += seconds
        self.flops += flops


def train_record(
    step: int, window: LogWindow, last: dict, args: argparse.Namespace, peak: float | None, mem_gib: float
) -> dict:
    """The log record of the window ending at ``step``: averages over its steps, the last step's lr/grad."""
    tokens_per_step = args.global_batch_size * args.seq_length
    per_step = window.seconds / window.steps
    tflops = window.flops / window.seconds / args.world_size / 1e12
    return {
        "step": step,
        "loss": window.loss_sum / window.steps,
        "lr": last["lr"],
        "grad_norm": last["grad_norm"],
        "iteration_time_s": per_step,
        "tokens_per_s": tokens_per_step / per_step,
        "tflops_per_gpu": tflops,
        "mfu": tflops / peak if peak else None,
        "mem_gib": mem_gib,
        "global_batch_size": args.global_batch_size,
        "consumed_samples": step * args.global_batch_size,
        "consumed_tokens": step * tokens_per_step,
        "eta_s": (args.train_iters - step) * per_step,
    }


def format_train_line(record: dict, train_iters: int) -> str:
    """``step 10/1000 | loss 2.345 | ... | ETA 20m 15s`` with readable numbers."""
    parts = [
        f"step {record['step']}/{train_iters}",
        f"loss {record['loss']:.4f}",
        f"lr {record['lr']:.3e}",
        f"grad {record['grad_norm']:.3f}",
        f"{record['iteration_time_s']:.3g} s/step",
        f"{readable(record['tokens_per_s'])} tok/s",
        f"{record['tflops_per_gpu']:.3g} TFLOP/s/GPU",
    ]
    if record["mfu"] is not None:
        parts.append(f"MFU {100 * record['mfu']:.1f}%")
    parts += [
        f"mem {record['mem_gib']:.1f} GiB",
        f"seen {readable(record['consumed_tokens'])} tok, {readable(record['consumed_samples'])} samples",
        f"ETA {readable_duration(record['eta_s'])}",
    ]
    return " | ".join(parts)


class StepLogger:
    """Writes log records to stdout, ``--log-jsonl``, TensorBoard and W&B (rank 0; no-ops elsewhere)."""

    def __init__(self, args: argparse.Namespace, enabled: bool) -> None:
        self.enabled, self.train_iters = enabled, args.train_iters
        self.jsonl = self.tb = self.wandb = None
        if not enabled:
            return
        if args.log_jsonl:
            os.makedirs(os.path.dirname(os.path.abspath(args.log_jsonl)), exist_ok=True)
            self.jsonl = open(args.log_jsonl, "a")  # noqa: SIM115
        if args.tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

            self.tb = SummaryWriter(args.tensorboard_dir)
        if args.wandb_project:
            self.wandb = _start_wandb(args)

    def log_train(self, record: dict) -> None:
        """A training record (``train_record``): the line, the JSON object, the scalars."""
        if self.enabled:
            print(format_train_line(record, self.train_iters), flush=True)
            self._write(record)

    def log_eval(self, step: int, loss: float, consumed_samples: int) -> None:
        """A validation loss and its perplexity."""
        if not self.enabled:
            return
        ppl = math.exp(min(loss, 20.0))  # Megatron clamps the exponent at 20 too
        print(
            f"step {step}/{self.train_iters} | validation loss {loss:.4f} | ppl {readable(ppl)}", flush=True
        )
        self._write({"step": step, "eval_loss": loss, "eval_ppl": ppl, "consumed_samples": consumed_samples})

    def log_event(self, step: int, text: str, **fields) -> None:
        """A one-off event (a checkpoint saved, an early exit): a line and a JSON object."""
        if self.enabled:
            print(f"step {step}/{self.train_iters} | {text}", flush=True)
            self._write({"step": step, **fields}, scalars=False)

    def _write(self, record: dict, scalars: bool = True) -> None:
        if self.jsonl:
            self._write_jsonl(record)
        if not scalars:
            return
        values, step = megatron_scalars(record), record["step"]
        samples = record.get("consumed_samples", step)
        if self.tb:
            for tag, value in values.items():
                self.tb.add_scalar(tag, value, step)
                if tag in VS_SAMPLES:
                    self.tb.add_scalar(f"{tag} vs samples", value, samples)
        if self.wandb:
            self.wandb.log(values, step=step)

    def _write_jsonl(self, record: dict) -> None:
        # A log file on a full or lost disk must not end a run whose checkpoints may still be written: one
        # warning, and the step lines on stdout go on.
        try:
            self.jsonl.write(json.dumps(record) + "\n")
            self.jsonl.flush()
        except OSError as err:
            print(
                f"warning: --log-jsonl {self.jsonl.name}: {err.strerror or err} (errno {err.errno}): its "
                f"records stop before step {record['step']}; training goes on",
                file=sys.stderr,
                flush=True,
            )
            with contextlib.suppress(OSError):
                self.jsonl.close()
            self.jsonl = None

    def close(self) -> None:
        """Flush and close every output."""
        if self.jsonl:
            self.jsonl.close()
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()


def wandb_dir(args: argparse.Namespace) -> str:
    """Where W&B writes its files: ``--wandb-save-dir``, else ``SAVE/wandb`` as Megatron."""
    return args.wandb_save_dir or os.path.join(args.save, "wandb")


def _start_wandb(args: argparse.Namespace):
    import wandb  # needs the wandb package; WANDB_MODE=offline writes files only

    directory = wandb_dir(args)
    os.makedirs(directory, exist_ok=True)
    config = json.loads(json.dumps(vars(args), default=str))
    return wandb.init(
        project=args.wandb_project,
        name=args.wandb_exp_name,
        entity=args.wandb_entity,
        dir=directory,
        config=config,
    )
