#!/usr/bin/env python3
"""Refresh packaging/vendor/ from the wheels pinned in packaging/vendor-requirements.txt.

The Debian package carries these libraries because Debian 12 does not package them.
They are kept unpacked in the tree, so that ``make package`` builds with no network
(Debian builds have none); this script is the one step that downloads, run by hand
when a pin in packaging/vendor-requirements.txt changes.  Only the library itself and
its data are kept (not its tests or update script), plus its licence, which
debian/copyright points to.

Usage: scripts/update-vendor.py [PIP]   (default: .venv/bin/pip)
"""

import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
KEEP = {
    "publicsuffixlist": ("__init__.py", "public_suffix_list.dat", "py.typed"),
}


def main() -> None:
    pip = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / ".venv" / "bin" / "pip")
    target = ROOT / "packaging" / "vendor"
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([pip, "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--require-hashes", "-r",
                        str(ROOT / "packaging" / "vendor-requirements.txt"), "-d", tmp],
                       check=True)
        wheels = pathlib.Path(tmp)
        for name, files in KEEP.items():
            shutil.rmtree(target / name, ignore_errors=True)
            (wheel,) = wheels.glob(f"{name}-*.whl")
            with zipfile.ZipFile(wheel) as z:
                for f in files:
                    dest = target / name / f
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(z.read(f"{name}/{f}"))
                (lic,) = [n for n in z.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
                (target / name / "LICENSE").write_bytes(z.read(lic))
            print(f"update-vendor: {target / name} from {wheel.name}")


if __name__ == "__main__":
    main()
