"""The README's flag tables and the start-up line of defaults that differ from Megatron-LM's, generated from
``megatron_flags``' rows, the parser's defaults and Megatron-LM's own flag list (``megatron_lm``).

``python -m megatron_anchor.training.flag_docs README.md`` rewrites the tables between their markers.
Torch-free.
"""

from __future__ import annotations

import argparse
import re
import sys

from megatron_anchor.training.megatron_flags import BY_FLAG, FLAGS, KINDS, NO_EFFECT, REFUSED, RESTATED
from megatron_anchor.training.megatron_lm import FEATURES, megatron_lm_flags, megatron_lm_source

# Defaults of Megatron flags that differ from Megatron-LM's, and why; each is printed at start-up when the
# flag is not given (``unstated_differences``).
DIFFERENT_DEFAULTS = {
    "--lr": "",
    "--micro-batch-size": "",
    "--attention-dropout": "the anchor attention has no dropout",
    "--position-embedding-type": "anchor training is about RoPE, applied in fp32 inside the anchor attention",
    "--transformer-impl": "Transformer Engine's layers when TE imports, else megatron-core's local ones",
}
# This project's flags whose default trains something else than Megatron-LM would (which has no such flag),
# and what Megatron-LM trains: printed at start-up beside the differing defaults when the flag is not given.
PROJECT_DEFAULTS = {
    "--attention-mode": "Megatron-LM: causal attention over the whole sample, no --reset-attention-mask",
}
# Defaults that read differently from Megatron-LM's parser default but build the same thing.
SAME_MEANING = {
    "--split": "Megatron-LM's validate_args sets 969, 30, 1",
    "--num-query-groups": "Megatron-LM reads it only with --group-query-attention: as many as the heads",
}


def _parser() -> argparse.ArgumentParser:
    from megatron_anchor.training.arguments import build_parser

    return build_parser()


def default_here(action: argparse.Action) -> object:
    """The value a flag left out gets here (a model flag: without a checkpoint; a restated flag: the value
    this build always has)."""
    from megatron_anchor.training.model_args import MODEL_DEFAULTS, REQUIRED

    row = next((BY_FLAG[s] for s in action.option_strings if s in BY_FLAG), None)
    if row is not None and row.built is not None:
        return row.built
    if action.dest in MODEL_DEFAULTS:
        default = MODEL_DEFAULTS[action.dest]
        return None if default is REQUIRED else default
    return None if action.default is argparse.SUPPRESS else action.default


def differing_defaults(parser: argparse.ArgumentParser) -> dict[str, tuple[object, object]]:
    """``{flag: (default here, Megatron-LM's)}`` for valued Megatron flags whose defaults differ."""
    megatron = megatron_lm_flags()
    out = {}
    for action in parser._actions:
        for flag in action.option_strings:
            theirs = megatron.get(flag)
            if theirs is None or not theirs.takes_value or action.nargs == 0 or flag in SAME_MEANING:
                continue
            row = BY_FLAG.get(flag)
            if row is not None and row.kind == RESTATED and row.built is None:
                continue  # no single value here: the flag changes nothing (e.g. --num-workers)
            here = default_here(action)
            if here != theirs.default:
                out[flag] = (here, theirs.default)
    return out


def _megatron_says(flag: str, theirs: object) -> str:
    why = DIFFERENT_DEFAULTS[flag]
    megatron = "Megatron-LM requires it" if theirs is None else f"Megatron-LM: {theirs}"
    return megatron + (f"; {why}" if why else "")


def unstated_differences(args: argparse.Namespace) -> str | None:
    """One line naming each default that differs from Megatron-LM's and that the command line left out."""
    given = set(getattr(args, "given_flags", ()))
    parser = _parser()
    parts = [
        f"{flag} {'auto' if here is None else here} ({_megatron_says(flag, theirs)})"
        for flag, (here, theirs) in differing_defaults(parser).items()
        if flag not in given
    ]
    actions = {s: a for a in parser._actions for s in a.option_strings}
    parts += [
        f"{flag} {default_here(actions[flag])} ({megatron})"
        for flag, megatron in PROJECT_DEFAULTS.items()
        if flag not in given
    ]
    return "defaults that differ from Megatron-LM's: " + "; ".join(parts) if parts else None


def _default_text(action: argparse.Action | None, flag: str) -> str:
    if action is None or action.nargs == 0:
        return ""
    here = default_here(action)
    theirs = megatron_lm_flags().get(flag)
    text = ("auto" if flag in DIFFERENT_DEFAULTS else "") if here is None else f"{here}"
    if theirs is not None and flag in DIFFERENT_DEFAULTS:
        text += f" (Megatron: {'required' if theirs.default is None else theirs.default})"
    return text.strip()


def markdown_table() -> str:
    """Every row of ``megatron_flags.FLAGS``, grouped by kind: flag, kind, default, help text."""
    actions = {s: a for a in _parser()._actions for s in a.option_strings}
    lines = ["| flag | here | default | what it does |", "|---|---|---|---|"]
    for kind in KINDS:
        for row in FLAGS:
            if row.kind == kind:
                name = row.flag.replace("*", "\\*")
                default = _default_text(actions.get(row.flag), row.flag).replace("|", "\\|")
                lines.append(f"| `{name}` | {kind} | {default} | {row.help.replace('|', chr(92) + '|')} |")
    return "\n".join(lines)


def features_table() -> str:
    """Megatron-LM's other flags by feature: how many, a few names, refused or no effect, and why."""
    flags = megatron_lm_flags()
    lines = [
        f"| feature | Megatron-LM flags ({megatron_lm_source()}) | here | why |",
        "|---|---|---|---|",
    ]
    for feature in FEATURES:
        names = [f for f, entry in flags.items() if f not in BY_FLAG and feature.covers(entry)]
        names = [f for f in names if next(x for x in FEATURES if x.covers(flags[f])) is feature]
        if not names:
            continue
        shown = ", ".join(f"`{n}`" for n in names[:4]) + (f" ... ({len(names)})" if len(names) > 4 else "")
        lines.append(f"| {feature.name} | {shown} | {NO_EFFECT if feature.no_effect else REFUSED} | "
                     f"{feature.reason} |")
    return "\n".join(lines)


MARKERS = {
    "megatron-flags-table": markdown_table,
    "megatron-features-table": features_table,
}


def with_tables(readme: str) -> str:
    """``readme`` with the text between each pair of markers replaced by its generated table."""
    for name, make in MARKERS.items():
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.DOTALL)
        if not pattern.search(readme):
            raise ValueError(f"no {start} ... {end} markers")
        block = f"{start}\n{make()}\n{end}"
        readme = pattern.sub(lambda _, block=block: block, readme)
    return readme


if __name__ == "__main__":  # python -m megatron_anchor.training.flag_docs README.md
    with open(sys.argv[1]) as f:
        text = with_tables(f.read())
    with open(sys.argv[1], "w") as f:
        f.write(text)
