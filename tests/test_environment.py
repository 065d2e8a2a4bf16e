"""The set-up files agree with each other and with what is installed."""

import re
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pins(text: str) -> dict:
    """{name: version} of every exact pin (``==`` or the version-string match ``===``)."""
    return {m[1].lower(): m[2] for m in re.finditer(r"^\s*-?\s*([A-Za-z0-9_.\-]+)===?([^\s#=]+)", text, re.M)}


def test_requirements_and_environment_pin_the_same_versions():
    req = pins((ROOT / "requirements.txt").read_text())
    env = pins((ROOT / "environment.yml").read_text())
    assert req == env
    assert req["torch"] == "2.13.0" and req["torchvision"] == "0.28.0"
    # torch by its exact version string: a local "2.13.0+cpu" build satisfies "==2.13.0", and
    # torchvision's wheel cannot load against it
    assert re.search(r"^torch===2\.13\.0\b", (ROOT / "requirements.txt").read_text(), re.M)


def test_installed_versions_match_the_pins():
    req = pins((ROOT / "requirements.txt").read_text())
    for name, pinned in req.items():
        assert version(name).split("+")[0] == pinned, name


def test_ci_runs_make_test_only():
    run = (ROOT / ".ci" / "run").read_text()
    commands = [line for line in run.splitlines() if line.strip() and not line.startswith("#")]
    assert commands[-1].strip() == "exec make test"
