"""The README's commands and CI stay in step; configs load and document themselves."""

import pathlib
import re

import pytest

from vae_jax.config import load_config

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (REPO / "configs").glob("*.py") if p.name != "__init__.py")


def _bash_blocks(text: str) -> list[str]:
  return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_the_readme_test_command():
  readme = (REPO / "README.md").read_text()
  quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
  commands = _bash_blocks(quickstart)
  assert len(commands) == 2, "the quickstart has exactly two one-line commands"
  assert all("\n" not in c for c in commands)
  assert "train.py" in commands[0] and "pytest" in commands[1]
  ci = (REPO / ".ci" / "run").read_text()
  assert commands[1] in ci.splitlines(), ".ci/run must run the README's test command verbatim"
  assert "-c constraints.txt" in commands[1], "CI installs the exact versions of constraints.txt"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads_and_has_a_docstring_with_its_command(path):
  config = load_config(str(path))
  text = path.read_text()
  assert text.startswith('"""'), f"{path.name} needs a docstring"
  assert "python train.py" in text.split('"""')[1], f"{path.name}'s docstring should give its command"
  assert config.model.name in ("conv", "mlp")


def test_every_default_field_has_a_comment():
  lines = (REPO / "configs" / "default.py").read_text().splitlines()
  fields = [l for l in lines if re.match(r"\s+c\.\w+\.\w+ = ", l) or re.match(r"\s+c\.seed = ", l)]
  assert fields
  missing = [l.strip() for l in fields if "#" not in l]
  assert not missing, f"fields without a comment: {missing}"
