#!/usr/bin/python3
"""Unpack the vendored wheels' importable modules into listgate/_vendor/.

Only the library itself and its data are kept (not its tests or update script),
plus its licence, which debian/copyright points to.  Usage: unpack-vendor.py
WHEEL_DIR TARGET_DIR.
"""

import pathlib
import sys
import zipfile

KEEP = {
    "publicsuffixlist": ("__init__.py", "public_suffix_list.dat", "py.typed"),
}


def main() -> None:
    wheels, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    target.mkdir(parents=True, exist_ok=True)
    (target / "__init__.py").write_text(
        '"""Libraries Debian 12 does not package, carried by the Debian package."""\n')
    for name, files in KEEP.items():
        (wheel,) = wheels.glob(f"{name}-*.whl")
        with zipfile.ZipFile(wheel) as z:
            for f in files:
                dest = target / name / f
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(z.read(f"{name}/{f}"))
            (lic,) = [n for n in z.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
            (target / name / "LICENSE").write_bytes(z.read(lic))


if __name__ == "__main__":
    main()
