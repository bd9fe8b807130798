#!/usr/bin/env sh
# Adds SynerMedGen Studio to the desktop's application menu for the current user: the desktop entry
# (pointing at the SynerMedGen executable in this folder) and the icon under ~/.local/share.
# Run it from the bundle (dist/SynerMedGen/install-desktop-entry.sh); --uninstall removes both.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
data=${XDG_DATA_HOME:-$HOME/.local/share}
entry="$data/applications/synermedgen.desktop"
icon="$data/icons/hicolor/256x256/apps/synermedgen.png"
if [ "${1:-}" = "--uninstall" ]; then
    rm -f "$entry" "$icon"
    echo "removed $entry and $icon"
    exit 0
fi
[ -x "$here/SynerMedGen" ] || { echo "error: run this from the bundle folder (no $here/SynerMedGen)" >&2; exit 1; }
mkdir -p "$(dirname "$entry")" "$(dirname "$icon")"
cp "$here/synermedgen.png" "$icon"
sed "s|@BUNDLE@|$here|g" "$here/synermedgen.desktop" > "$entry"
command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database -q "$data/applications" || true
echo "installed $entry (runs $here/SynerMedGen) and $icon"
