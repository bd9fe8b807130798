"""One version everywhere: the command line, the DICOM exports' SoftwareVersions and the app's About
box all read pyproject.toml's (or the installed package's)."""
import re
import tomllib

from engine.version import PYPROJECT, version
from main import main


def test_the_version_is_pyprojects(capsys):
    expected = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["version"]
    assert version() == expected and re.fullmatch(r"\d+\.\d+\.\d+\S*", expected)
    try:
        main(["--version"])
    except SystemExit as done:
        assert done.code == 0
    assert capsys.readouterr().out.strip() == f"SynerMedGen Studio {expected}"
