#!/usr/bin/env bash
# Build dist/memwarden_<version>-1_<arch>.deb from this checkout.
#
# The daemon lives in its own venv at /opt/memwarden, made with Debian's /usr/bin/python3 so it runs on the
# interpreter the package depends on, and so no distribution Python module is shadowed or replaced. The venv
# is built in a staging tree and its absolute paths are rewritten to /opt/memwarden, as dh-virtualenv does;
# byte-compiling happens at install time (postinst), the Debian way.
set -euo pipefail
# Byte-code is made at install (postinst): nothing run from the stage (pip, help2man's --help) may leave any.
export PYTHONDONTWRITEBYTECODE=1

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${OUT:-$root/dist}
python=${DEB_PYTHON:-/usr/bin/python3}
prefix=/opt/memwarden

die() { echo "make deb: $*" >&2; exit 1; }
for tool in dpkg-deb dpkg-architecture gzip help2man; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install dpkg-dev help2man)"
done
[ -x "$python" ] || die "$python is missing (apt-get install python3)"
"$python" -c 'import ensurepip, venv' 2>/dev/null || die "$python has no venv module (apt-get install python3-venv)"

version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$root/daemon/memwarden/__init__.py")
[ -n "$version" ] || die "cannot read __version__ from daemon/memwarden/__init__.py"
debversion="$version-1"
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
pyminor=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stage="$work/memwarden_${debversion}_${arch}"
venv="$stage$prefix"

echo "make deb: venv at $prefix with $python ($pyminor)"
"$python" -m venv "$venv"
# A copy of the tree without what git ignores, so a developer's venv, egg-info or build/ never leaks into the wheel.
git -C "$root" ls-files -z --cached --others --exclude-standard | (cd "$root" && tar --null -T - -cf -) | (mkdir "$work/src" && tar -C "$work/src" -xf -)
"$venv/bin/python" -m pip install --quiet --no-compile --disable-pip-version-check "$work/src[gpu]"

# Absolute staging paths → the installed prefix: script shebangs, activate scripts and pyvenv.cfg.
grep -rlI --null "$stage" "$venv" | xargs -0 -r sed -i "s|$stage||g"
if grep -rlI "$stage" "$venv" >/dev/null; then die "staging path left in the venv"; fi
find "$venv" -name __pycache__ -prune -exec rm -rf {} +

install -d "$stage/usr/bin" "$stage/lib/systemd/system" "$stage/etc/memwarden" "$stage/usr/lib/sysusers.d" \
  "$stage/usr/share/doc/memwarden" "$stage/usr/share/memwarden/grafana" "$stage/usr/share/man/man8" \
  "$stage/usr/share/man/man1" "$stage/usr/share/lintian/overrides" "$stage/DEBIAN"
ln -s "$prefix/bin/memwardend" "$stage/usr/bin/memwardend"
ln -s "$prefix/bin/memwardenctl" "$stage/usr/bin/memwardenctl"
install -m 0644 "$root/systemd/memwarden.service" "$root/systemd/memwarden.socket" \
  "$root/systemd/memwarden-train@.service" "$stage/lib/systemd/system/"
install -d "$stage/usr/share/polkit-1/rules.d"
install -m 0644 "$here/memwarden-train.rules" "$stage/usr/share/polkit-1/rules.d/50-memwarden-train.rules"
install -m 0644 "$root/etc/memwarden.toml" "$stage/etc/memwarden/memwarden.toml"
install -m 0644 "$here/sysusers.conf" "$stage/usr/lib/sysusers.d/memwarden.conf"
install -m 0644 "$here/lintian-overrides" "$stage/usr/share/lintian/overrides/memwarden"
if [ -f "$root/packaging/grafana/memwarden.json" ]; then
  install -m 0644 "$root/packaging/grafana/memwarden.json" "$stage/usr/share/memwarden/grafana/"
fi

doc="$stage/usr/share/doc/memwarden"
install -m 0644 "$here/copyright" "$doc/copyright"
# README.md stays uncompressed: the units' Documentation= links to it.
install -m 0644 "$root/README.md" "$doc/README.md"
install -d -m 0755 "$doc/docs"
install -m 0644 "$root"/docs/*.md "$doc/docs/"
gzip -9n < "$root/BENCHMARKS.md" > "$doc/BENCHMARKS.md.gz"
gzip -9n < "$root/CHANGELOG.md" > "$doc/changelog.gz"
sed "s/@VERSION@/$debversion/; s/@DATE@/$(date -R -d "@$(git -C "$root" log -1 --format=%ct)")/" \
  "$here/changelog" | gzip -9n > "$doc/changelog.Debian.gz"

# Man pages from --help. The staged venv's shebangs already name /opt/memwarden, so wrappers run it here.
mkdir "$work/bin"
for cmd in memwardend:8:"guard for hosts that run local LLMs (RAM, containers, GPU, learning)" \
           memwardenctl:1:"control memwardend over its unix socket"; do
  name=${cmd%%:*}; rest=${cmd#*:}; section=${rest%%:*}; what=${rest#*:}
  printf '#!/bin/sh\nexec "%s" -m memwarden.cli.%s "$@"\n' "$venv/bin/python" "$name" > "$work/bin/$name"
  chmod +x "$work/bin/$name"
  help2man -N -s "$section" -n "$what" "$work/bin/$name" | gzip -9n > "$stage/usr/share/man/man$section/$name.$section.gz"
done
# Shell completion, generated from memwardenctl's parser so it lists exactly the commands this build has.
install -d "$stage/usr/share/bash-completion/completions" "$stage/usr/share/zsh/vendor-completions"
"$work/bin/memwardenctl" completion bash > "$stage/usr/share/bash-completion/completions/memwardenctl"
"$work/bin/memwardenctl" completion zsh > "$stage/usr/share/zsh/vendor-completions/_memwardenctl"
chmod 0644 "$stage/usr/share/bash-completion/completions/memwardenctl" \
  "$stage/usr/share/zsh/vendor-completions/_memwardenctl"

# Debian policy for shipped binaries: stripped extensions, shared objects not executable, no stray +x bits.
find "$venv/lib" -type f -name '*.so*' -exec strip --strip-unneeded {} + -exec chmod 0644 {} +
find "$venv/lib" -type f -perm /111 ! -name '*.so*' -exec chmod a-x {} +

for script in postinst prerm postrm; do
  install -m 0755 "$here/$script" "$stage/DEBIAN/$script"
done
echo /etc/memwarden/memwarden.toml > "$stage/DEBIAN/conffiles"
find "$venv" -name __pycache__ -prune -exec rm -rf {} +  # the man pages ran the venv's Python
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$debversion/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" -e "s/@PYTHON@/python$pyminor/" \
  "$here/control" > "$stage/DEBIAN/control"

mkdir -p "$out"
deb="$out/memwarden_${debversion}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "make deb: $deb ($(du -h "$deb" | cut -f1), $size KiB installed)"
