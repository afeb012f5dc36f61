#!/usr/bin/env bash
# Unpack Debian's headless Chromium (and the shared libraries it needs that this
# machine lacks) into a folder, without installing anything system-wide, for
# `make browser-test` on machines where `playwright install chromium` cannot reach
# its download host. Needs apt-get (Debian/Ubuntu) and dpkg; no root for the unpacking,
# but `apt-get update` may need it once.
#
#   tests/fetch_chromium.sh [DEST]        # default DEST: .browser
#   export DLT_CHROMIUM=$DEST/chromium     # the wrapper it writes (sets LD_LIBRARY_PATH)
set -euo pipefail

dest="$(realpath -m "${1:-.browser}")"
debs="$dest/debs"
root="$dest/root"
mkdir -p "$debs" "$root"

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
# runtime dependencies (first alternative of each) that are libraries
lib_depends() {
    apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
        --no-replaces --no-enhances "$1" 2>/dev/null |
        awk '/^  (\|)?Depends:/ && $2 !~ /^</ {print $2}' | grep -E '^(lib|chromium-common$)' || true
}

queue=(chromium-headless-shell chromium-common)
declare -A seen=()
while ((${#queue[@]})); do
    pkg="${queue[0]}"; queue=("${queue[@]:1}")
    pkg="${pkg%%:*}"
    [[ -n "${seen[$pkg]:-}" ]] && continue
    seen[$pkg]=1
    if [[ "$pkg" != chromium-* ]] && installed "$pkg"; then continue; fi
    if ! ls "$debs/${pkg}_"*.deb >/dev/null 2>&1; then
        # as root apt drops to the _apt user, who may not write here: keep its warning out
        (cd "$debs" && apt-get download -q "$pkg" 2>&1 >/dev/null | grep -v unsandboxed >&2 || true)
    fi
    for dep in $(lib_depends "$pkg"); do queue+=("$dep"); done
done

for deb in "$debs"/*.deb; do dpkg -x "$deb" "$root"; done

exe="$root/usr/lib/chromium/chromium-headless-shell"
[[ -x "$exe" ]] || { echo "no chromium-headless-shell executable in the unpacked packages" >&2; exit 1; }

libdirs="$(find "$root" -name '*.so*' -printf '%h\n' | sort -u | paste -sd:)"
cat > "$dest/chromium" <<WRAP
#!/usr/bin/env bash
# written by tests/fetch_chromium.sh: Debian's chromium-headless-shell, unpacked
export LD_LIBRARY_PATH="$libdirs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$exe" "\$@"
WRAP
chmod +x "$dest/chromium"

missing="$(LD_LIBRARY_PATH="$libdirs" ldd "$exe" | grep 'not found' || true)"
if [[ -n "$missing" ]]; then
    echo "still missing libraries:" >&2; echo "$missing" >&2; exit 1
fi
"$dest/chromium" --version
echo "export DLT_CHROMIUM=$dest/chromium"
