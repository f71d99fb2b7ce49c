"""systemd/listgate.service: it verifies, and its exposure score stays below 2.0.

Both systemd-analyze commands work without systemd as PID 1 (this container, CI).
`verify` checks that ExecStart's binary exists: here it is pointed at the venv's
listgate (the unit as shipped, with only that path rewritten); test_package.py
verifies the unit as the package installs it, with /usr/bin/listgate.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "listgate.service"
MAX_EXPOSURE = 2.0


def local_unit(tmp_path: Path) -> Path:
    """The shipped unit with /usr/bin/listgate replaced by this venv's listgate."""
    venv_listgate = Path(sys.executable).parent / "listgate"
    assert venv_listgate.exists(), venv_listgate
    unit = tmp_path / "listgate.service"
    unit.write_text(UNIT.read_text().replace("/usr/bin/listgate", str(venv_listgate)))
    return unit


def test_unit_verifies(tmp_path: Path) -> None:
    p = subprocess.run(["systemd-analyze", "verify", str(local_unit(tmp_path))],
                       capture_output=True, text=True)
    assert (p.returncode, p.stderr) == (0, ""), p.stderr


def test_verify_would_catch_a_missing_binary(tmp_path: Path) -> None:
    """verify is not a formality: the unpackaged path fails it."""
    unit = tmp_path / "listgate.service"
    unit.write_text(UNIT.read_text().replace("/usr/bin/listgate", "/nonexistent/listgate"))
    p = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                       text=True)
    assert p.returncode != 0 and "/nonexistent/listgate" in p.stderr


def test_exposure_score_below_2(tmp_path: Path) -> None:
    p = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                        str(local_unit(tmp_path))], capture_output=True, text=True)
    m = re.search(r"Overall exposure level for listgate\.service: (\d+\.\d+)", p.stdout)
    assert m, p.stdout + p.stderr
    score = float(m.group(1))
    print(f"systemd-analyze security exposure: {score}")
    assert score < MAX_EXPOSURE, p.stdout


def test_unit_names_the_packaged_paths() -> None:
    """The directories and reload wiring README.md documents."""
    text = UNIT.read_text()
    for line in ("User=listgate", "RuntimeDirectory=listgate", "StateDirectory=listgate",
                 "LogsDirectory=listgate", "ExecReload=/bin/kill -USR2 $MAINPID",
                 "MemoryDenyWriteExecute=yes", "CapabilityBoundingSet=\n",
                 "ExecStart=/usr/bin/listgate -c ${LISTGATE_CONFIG} serve"):
        assert line in text, line
