#!/usr/bin/env bash
# Build the Debian package: build/deb/listgate_VERSION_all.deb (`make package`).
#
# Stages the working tree (tracked and untracked-but-not-ignored files, so it builds
# what you are looking at) in build/deb/src/listgate-VERSION/, with packaging/debian
# as its debian/ directory, then runs dpkg-buildpackage there with Debian's python3.
# Needs the tools of `scripts/install-debian-deps.sh package` and nothing else: it
# downloads nothing (Debian builds have no network; tests/ops/test_package.py builds
# under `unshare --net`).  The libraries Debian 12 lacks are in packaging/vendor/
# (scripts/update-vendor.py refreshes them from packaging/vendor-requirements.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
out=build/deb
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' listgate/__init__.py)
stage=$out/src/listgate-$version

rm -rf "$out"
mkdir -p "$stage"
git ls-files -coz --exclude-standard | while IFS= read -r -d '' f; do
    [ -e "$f" ] && printf '%s\0' "$f"
done | tar --null -T - -cf - | tar -xf - -C "$stage"
rm -rf "$stage/debian"
cp -r packaging/debian "$stage/debian"

# Debian's interpreter, whatever python3 is first on PATH (e.g. a pyenv one): pybuild
# calls python3.X by name.
(cd "$stage" && env PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -us -uc -b)
mv "$out"/src/listgate_* "$out"/
echo "build-deb: $(ls "$out"/*.deb)"
