"""Ten Megatron-LM command lines (``megatron_recipes``) through ``--dry-run``, all in this process: each
passes, or reports every problem in one round, each refused flag named with what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
from megatron_recipes import HF_CONFIGS, RECIPES, flag_outcomes, recipe_fixtures, with_recipes_table
from train_harness import dry_run_in_process

from megatron_anchor.training.arguments import megatron_status

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> dict[str, str]:
    return recipe_fixtures(tmp_path_factory.mktemp("recipes"))


def _dry_run(argv: list[str], world_size: int, monkeypatch, capsys) -> tuple[int, str, list[str]]:
    code, out, err = dry_run_in_process(argv, world_size, monkeypatch, capsys)
    errors = [line.removeprefix("error: ") for line in err.splitlines() if line.startswith("error: ")]
    return code, out, errors


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_megatron_recipe_passes_or_reports_every_problem_in_one_round(recipe, fixtures, monkeypatch, capsys):
    code, out, errors = _dry_run(recipe.argv(fixtures), recipe.world_size, monkeypatch, capsys)
    kinds = flag_outcomes(recipe)
    given = set(recipe.argv(fixtures))
    for flag in kinds["refused"]:  # named, with the feature's reason (what to do, where there is a way)
        reason = megatron_status(flag, [], given)[1]
        assert [e for e in errors if e.startswith(f"{flag}: ")] == [f"{flag}: {reason}"], errors
    for flag in kinds["unknown"]:
        assert [e for e in errors if e.startswith(f"{flag}: ")] == [f"{flag}: unknown flag"], errors
    for text in recipe.expected:
        assert sum(text in e for e in errors) == 1, (text, errors)
    n = len(kinds["refused"]) + len(kinds["unknown"]) + len(recipe.expected)
    assert len(errors) == len(set(errors)) == n, "\n".join(errors)
    lines = out.strip().splitlines()
    plural = "s" if n > 1 else ""
    verdict = "dry run: OK" if n == 0 else f"dry run: {n} error{plural} (listed above): nothing started"
    assert lines[-1] == verdict and "resolved configuration:" in out
    assert code == (2 if errors else 0)
    if any(f"{{{name}}}" in recipe.line for name in HF_CONFIGS):  # a converted (causal) model: anchor here
        assert "note: --attention-mode anchor (the default) trains this run; checkpoint" in out


def test_readme_recipe_table_is_generated_from_the_recipes():
    readme = (REPO / "README.md").read_text()
    assert with_recipes_table(readme) == readme, "run: python tests/training/megatron_recipes.py README.md"
