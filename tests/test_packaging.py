"""environment.yml stays in step with pyproject.toml."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for group in meta["optional-dependencies"].values() for r in group]
    wanted = {_norm(r) for r in meta["dependencies"] + extras}
    env = (ROOT / "environment.yml").read_text()
    listed = {_norm(m) for m in re.findall(r'^\s+- "([^"]+)"\s*$', env, flags=re.M)}
    assert listed == wanted


def test_torch_ranges_admit_the_on_disk_pair():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = " ".join(meta["dependencies"])
    assert "torch>=2.4,<=2.14.1" in deps and "torchvision>=0.19,<=0.29.1" in deps
