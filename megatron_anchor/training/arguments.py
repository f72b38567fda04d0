"""Command-line flags of the trainer: Megatron's names, meanings and defaults (``megatron_flags`` holds each
flag's help text and kind), defaults in ``--help``, and every problem of a command line gathered into one
report. Imports neither torch nor megatron-core."""

from __future__ import annotations

import argparse
import difflib
import json
import sys

from megatron_anchor.data.position_modes import POSITION_MODES
from megatron_anchor.parallel.comm_types import CP_COMM_TYPES
from megatron_anchor.parallel.layout_names import CP_LAYOUTS
from megatron_anchor.training.megatron_flags import (
    NO_EFFECT,
    add_flag,
    add_restated_args,
    fill_help,
    not_accepted,
)
from megatron_anchor.training.megatron_lm import megatron_feature, megatron_lm_flags
from megatron_anchor.training.model_args import add_model_args
from megatron_anchor.training.report import Report


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every valued flag's default in ``--help`` (unless None or the help already states it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default is None or default is argparse.SUPPRESS or action.nargs == 0 or "default" in text:
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


class TrainerArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser that reads a whole command line before it reports: refused Megatron flags (with
    their reason), misspelt ones (with the nearest name), stray values and bad values, one line each."""

    def error(self, message: str):  # type: ignore[override]
        """Print ``prog: error: message`` and exit 2."""
        sys.stderr.write(f"{self.prog}: error: {message}\n(see --help)\n")
        sys.exit(2)

    def option_names(self) -> list[str]:
        """Every long option string the parser knows."""
        return [s for a in self._actions for s in a.option_strings if s.startswith("--")]

    def parse_gathered(self, argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
        """``(args, errors)``: every problem of ``argv`` as one line each; the flags that had one are left
        at their defaults and named in ``args.unparsed`` (their dests). Never exits (but for --help)."""
        kept, errors, no_effect = screen_flags(argv, self)
        unparsed: set[str] = set()
        while True:
            try:
                args, stray = self.parse_known_args(kept)
                break
            except argparse.ArgumentError as err:  # a bad value: report it, parse without that flag
                errors.append(f"{err.argument_name}: {err.message}" if err.argument_name else err.message)
                names = set((err.argument_name or "").split("/"))
                action = next((a for a in self._actions if names & set(a.option_strings)), None)
                if action is None:  # nothing to take out: every flag keeps its default
                    unparsed.add("*")
                    kept = []
                    continue
                unparsed.add(action.dest)
                kept = _without(kept, set(action.option_strings))
        errors += [f"{value}: a value without a flag" for value in stray]
        args.unparsed = unparsed
        args.given_flags = sorted({t.split("=", 1)[0] for t in argv if t.startswith("--")} - {"--"})
        args.no_effect_flags = no_effect
        return args, errors

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        """Parse; every problem of the command line at once, one line each, then exit 2."""
        parsed, errors = self.parse_gathered(sys.argv[1:] if args is None else list(args))
        if errors:
            self.error("\n  ".join([f"{len(errors)} flag(s) not accepted:", *errors]))
        return parsed


def _without(argv: list[str], flags: set[str]) -> list[str]:
    """``argv`` without each of ``flags`` and the values that follow it."""
    out, skipping = [], False
    for token in argv:
        if token.startswith("--"):
            skipping = token.split("=", 1)[0] in flags
        if not skipping:
            out.append(token)
    return out


def _suggestion(name: str, parsed: list[str]) -> str:
    """The nearest flag this trainer takes, else the nearest other Megatron-LM flag (with why it is not
    taken), as "; did you mean ...?"; empty when none is close."""
    close = difflib.get_close_matches(name, parsed, n=1, cutoff=0.75)
    if not close:
        close = difflib.get_close_matches(name, list(megatron_lm_flags()), n=1, cutoff=0.75)
    if not close:
        return ""
    status = not_accepted(close[0])
    return f"; did you mean {close[0]}?" + (f" ({status[1]})" if status else "")


def _segments(argv: list[str]) -> list[tuple[str | None, list[str]]]:
    """``argv`` as ``(flag token, the values after it)`` pairs; values before any flag under None."""
    segments: list[tuple[str | None, list[str]]] = [(None, [])]
    for token in argv:
        if token.startswith("--") and token != "--":
            segments.append((token, []))
        else:
            segments[-1][1].append(token)
    return segments


def _is_megatron_default(name: str, values: list[str]) -> bool:
    """Whether ``values`` of Megatron-LM flag ``name`` are its default (the feature stays off)."""
    entry = megatron_lm_flags()[name]
    default = entry.default if isinstance(entry.default, list) else [entry.default]
    if name.endswith("-parallel-size") and values == ["1"]:
        return True  # a parallel size of 1 is no parallelism, whatever the flag's default
    if not entry.takes_value or len(values) != len(default):
        return False
    try:
        return all(float(v) == float(d) for v, d in zip(values, default))
    except (TypeError, ValueError):
        return [str(d) for d in default] == values


def megatron_status(name: str, values: list[str], given: set[str]) -> tuple[str, str] | None:
    """What a flag this trainer does not define gets, with ``values`` after it on a command line whose
    flags are ``given``: (``refused`` or ``no effect``, why), or None for a name Megatron-LM does not know.
    A feature's flag at Megatron's off value changes nothing (unless the feature is switched on)."""
    status = not_accepted(name, given)
    if status is None or status[0] == NO_EFFECT:
        return status
    feature = megatron_feature(name)
    switched_on = feature is not None and feature.switched_on_by in given
    if not switched_on and _is_megatron_default(name, values):
        return NO_EFFECT, f"Megatron-LM's default value: {status[1]}"
    return status


def screen_flags(
    argv: list[str], parser: TrainerArgumentParser
) -> tuple[list[str], list[str], list[str]]:
    """``(argv to parse, errors, no-effect flags given)``. Megatron-LM flags this trainer lacks are taken
    out with their values: refused with their feature's reason, unless they change nothing (a performance
    or telemetry switch, or a feature's flag at Megatron's default value, e.g. ``--expert-model-parallel-size
    1``), which are kept as ``--flag value`` text to list at start-up. A name Megatron-LM does not know
    either gets the nearest known name; a value after a switch is reported."""
    actions = {s: a for a in parser._actions for s in a.option_strings}
    kept, errors, no_effect = [], [], []
    given = {t.split("=", 1)[0] for t in argv if t.startswith("--")}
    for token, values in _segments(argv):
        name = None if token is None else token.split("=", 1)[0]
        action = actions.get(name)
        if token is None or action is not None:
            if action is not None and action.nargs == 0 and values:
                errors.append(f"{name} takes no value: {' '.join(values)}")
                values = []
            kept += [token, *values] if token is not None else values
            continue
        values = [token.split("=", 1)[1]] if "=" in token else values
        status = megatron_status(name, values, given)
        if status is None:
            errors.append(f"{name}: unknown flag" + _suggestion(name, sorted(actions)))
        elif status[0] == NO_EFFECT:
            no_effect.append(" ".join([name, *values]))
        else:
            errors.append(f"{name}: {status[1]}")
    return kept, errors, no_effect


def _data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    add_flag(g, "--data-path", nargs="+", default=None)
    add_flag(g, "--mock-data", action="store_true")
    add_flag(g, "--split", default="969,30,1")
    add_flag(g, "--seq-length", type=int, default=None)
    add_flag(g, "--position-ids", choices=POSITION_MODES, default="global")
    add_flag(g, "--reset-position-ids", dest="position_ids", action="store_const", const="reset")
    add_flag(g, "--mask-cross-doc-labels", "--eod-mask-loss", action="store_true")
    add_flag(g, "--tokenizer-type", default=None)
    add_flag(g, "--tokenizer-model", default=None)
    add_flag(g, "--vocab-file", default=None)
    add_flag(g, "--merge-file", default=None)
    add_flag(g, "--vocab-size", type=int, default=None)
    add_flag(g, "--padded-vocab-size", type=int, default=None)
    add_flag(g, "--data-cache-path", default=None)
    add_flag(g, "--no-data-shuffle", dest="data_shuffle", action="store_false")


def _train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    add_flag(g, "--micro-batch-size", type=int, default=1)
    add_flag(g, "--global-batch-size", type=int, default=None)
    add_flag(g, "--train-iters", type=int, default=None)
    add_flag(g, "--train-samples", type=int, default=None)
    add_flag(g, "--lr", type=float, default=3e-4)
    add_flag(g, "--min-lr", type=float, default=0.0)
    add_flag(g, "--decoupled-lr", type=float, default=None)
    add_flag(g, "--decoupled-min-lr", type=float, default=None)
    add_flag(g, "--lr-decay-style", choices=("linear", "cosine", "constant"), default="linear")
    add_flag(g, "--lr-decay-iters", type=int, default=None)
    add_flag(g, "--lr-decay-samples", type=int, default=None)
    add_flag(g, "--lr-warmup-iters", type=int, default=0)
    add_flag(g, "--lr-warmup-samples", type=int, default=0)
    add_flag(g, "--lr-warmup-fraction", type=float, default=None)
    add_flag(g, "--weight-decay", type=float, default=0.01)
    add_flag(g, "--adam-beta1", type=float, default=0.9)
    add_flag(g, "--adam-beta2", type=float, default=0.999)
    add_flag(g, "--adam-eps", type=float, default=1e-8)
    add_flag(g, "--clip-grad", type=float, default=1.0)
    add_flag(g, "--bf16", action="store_true")
    add_flag(g, "--seed", type=int, default=1234)
    add_flag(g, "--recompute-method", choices=("uniform", "block"), default=None)
    add_flag(g, "--recompute-num-layers", type=int, default=None)
    add_flag(g, "--manual-gc", action="store_true")
    add_flag(g, "--manual-gc-interval", type=int, default=0)
    add_flag(g, "--empty-unused-memory-level", type=int, choices=(0, 1, 2), default=0)
    add_flag(g, "--cross-entropy-chunk-size", type=int, default=0, metavar="TOKENS")
    add_flag(g, "--grad-reduce-in-bf16", action="store_true")


def _parallel_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("parallelism")
    add_flag(g, "--tensor-model-parallel-size", type=int, default=1)
    add_flag(g, "--pipeline-model-parallel-size", type=int, default=1)
    add_flag(g, "--context-parallel-size", type=int, default=1)
    add_flag(g, "--cp-layout", choices=CP_LAYOUTS, default="balanced")
    add_flag(g, "--cp-comm-type", nargs="+", choices=CP_COMM_TYPES, default=["p2p"])
    add_flag(g, "--hierarchical-context-parallel-sizes", nargs="+", type=int, default=None, metavar="SIZE")
    add_flag(g, "--use-distributed-optimizer", action="store_true")
    add_flag(g, "--sequence-parallel", action="store_true")


def _checkpoint_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("checkpoints")
    add_flag(g, "--save", default=None)
    add_flag(g, "--load", default=None)
    add_flag(g, "--pretrained-checkpoint", default=None)
    add_flag(g, "--save-interval", "--persistent-save-interval", type=int, default=None)
    add_flag(g, "--no-save-optim", action="store_true")


def _resume_args(p: argparse.ArgumentParser) -> None:
    """--finetune, --no-load-optim/rng, --override-opt-param-scheduler, timeouts and exit conditions."""
    g = p.add_argument_group("resume and fault tolerance")
    add_flag(g, "--finetune", action="store_true")
    add_flag(g, "--no-load-optim", action="store_true")
    add_flag(g, "--no-load-rng", action="store_true")
    add_flag(g, "--override-opt-param-scheduler", "--override-opt_param-scheduler", action="store_true")
    add_flag(g, "--distributed-timeout-minutes", type=float, default=10.0)
    add_flag(g, "--exit-signal-handler", action="store_true")
    add_flag(g, "--exit-duration-in-mins", type=float, default=None)
    add_flag(g, "--exit-interval", type=int, default=None)


def _logging_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation and logging")
    add_flag(g, "--eval-interval", type=int, default=None)
    add_flag(g, "--eval-iters", type=int, default=100)
    add_flag(g, "--log-interval", type=int, default=100)
    add_flag(g, "--log-throughput", action="store_true")
    add_flag(g, "--log-jsonl", default=None)
    add_flag(g, "--tensorboard-dir", default=None)
    add_flag(g, "--wandb-project", default=None)
    add_flag(g, "--wandb-exp-name", default=None)
    add_flag(g, "--wandb-save-dir", default=None)
    add_flag(g, "--wandb-entity", default=None)
    add_flag(g, "--peak-tflops", type=float, default=None)
    add_flag(g, "--profile", action="store_true")
    add_flag(g, "--use-pytorch-profiler", action="store_true")
    add_flag(g, "--profile-step-start", type=int, default=10)
    add_flag(g, "--profile-step-end", type=int, default=12)
    add_flag(g, "--profile-ranks", type=int, nargs="+", default=[0])
    add_flag(g, "--dry-run", action="store_true")


def build_parser() -> TrainerArgumentParser:
    """The pretraining argument parser."""
    p = TrainerArgumentParser(
        prog="python -m megatron_anchor.pretrain",
        usage="[torchrun ...] %(prog)s --num-layers N --hidden-size H --num-attention-heads A "
        "--seq-length S (--train-iters I | --train-samples N) (--data-path ... | --mock-data) [flags]",
        description="AnchorAttention long-context pretraining on megatron-core, with Megatron-LM's flags, "
        "meanings and defaults (Llama: --normalization RMSNorm --swiglu --disable-bias-linear "
        "--untie-embeddings-and-output-weights --hidden-dropout 0).",
        epilog="Megatron-LM flags for features this project lacks (MoE, FP8, pipeline stages, ...) are "
        "refused with their reason; the README's flag table lists every flag.",
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
        exit_on_error=False,
    )
    for add in (
        add_model_args,  # with the RoPE flags
        _data_args,
        _train_args,
        _parallel_args,
        _checkpoint_args,
        _resume_args,
        _logging_args,
        add_restated_args,
    ):
        add(p)
    fill_help(p)  # one text per flag, also for flags added without add_flag
    return p


def gather_configuration(argv: list[str] | None, world_size: int) -> tuple[argparse.Namespace, Report]:
    """Parse and check a command line: every flag and configuration error in ``report.errors``."""
    from megatron_anchor.training.validation import check_args

    parser = build_parser()
    args, errors = parser.parse_gathered(sys.argv[1:] if argv is None else list(argv))
    report = Report(errors=list(errors))
    check_args(args, world_size, report)
    report.command_line_errors = len(report.errors)
    return args, report


def parse_args(argv: list[str] | None, world_size: int) -> argparse.Namespace:
    """Parse and validate; every error of the command line is printed, one line each, then exit 2."""
    args, report = gather_configuration(argv, world_size)
    if report.errors:
        build_parser().error("\n  ".join([f"{len(report.errors)} problem(s):", *report.errors]))
    return args


def format_config(args: argparse.Namespace) -> str:
    """The resolved configuration as sorted JSON (written at start-up, printed by --dry-run)."""
    skip = {"unparsed", "given_flags"}
    return json.dumps({k: v for k, v in sorted(vars(args).items()) if k not in skip}, indent=1, default=str)
