"""One version, from the package metadata: `eakd --version` and `eakd.__version__` agree with it."""

from importlib.metadata import version

import eakd
from eakd.cli import main


def test_version_comes_from_the_metadata(capsys):
    assert eakd.__version__ == version("eakd")
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"eakd {version('eakd')}"
