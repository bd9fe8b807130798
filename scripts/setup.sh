#!/usr/bin/env bash
# Prepares a fresh machine: system libraries for Qt/VTK under Xvfb, dicom3tools (dciodvfy, which
# the DICOM export tests run) and Orthanc with its DICOMweb plugin (the PACS that the PACS tests
# start) as root, the .venv with pinned packages. A second run finds the stamp and returns in well
# under a second.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
DEBS="xvfb xauth libgl1 libegl1 libegl-mesa0 libglx-mesa0 libgl1-mesa-dri libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-randr0 libxcb-shape0 libxcb-xkb1 libfontconfig1 libdbus-1-3 binutils dicom3tools orthanc orthanc-dicomweb"

missing_debs() {
    command -v dpkg-query >/dev/null 2>&1 || return 0
    local p
    for p in $DEBS; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || printf '%s ' "$p"
    done
}

missing=$(missing_debs)
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing Debian packages: $missing"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        # no service a package brings (Orthanc's) is started while installing (policy-rc.d), and
        # Orthanc's stays off afterwards: the PACS tests start their own on free ports
        policy=/usr/sbin/policy-rc.d
        own_policy=
        if [ ! -e "$policy" ]; then
            printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && own_policy=1
        fi
        status=0
        # shellcheck disable=SC2086
        apt-get install -y -qq --no-install-recommends $missing >/dev/null || status=$?
        if [ -n "$own_policy" ]; then rm -f "$policy"; fi
        [ "$status" = 0 ] || exit "$status"
        case " $missing " in
            *" orthanc "*)
                if command -v systemctl >/dev/null 2>&1; then systemctl disable --now orthanc >/dev/null 2>&1 || true; fi
                if command -v update-rc.d >/dev/null 2>&1; then update-rc.d orthanc disable >/dev/null 2>&1 || true; fi
                ;;
        esac
    else
        echo "setup: WARNING: these Debian packages are missing and are needed for the GUI and its" >&2
        echo "       tests under Xvfb, or the PACS tests; install them as root: apt-get install $missing" >&2
    fi
fi

stamp=.venv/.synermedgen-stamp
want=$(cat requirements.lock pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
# torch first and pinned: an unpinned torch pulled in by another package is a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -m pip install -q -r requirements.lock 2>&1 | grep -v "is ignored" || true
# The demo-data builder reads the MNI152 maps shipped inside nilearn; nilearn itself is never
# imported, so its heavy dependencies (scikit-learn, pandas) are not installed.
.venv/bin/python -m pip install -q --no-deps "nilearn==0.14.1" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import torch, PySide6, pyqtgraph, SimpleITK, pydicom, onnxruntime, pynetdicom, dicomweb_client" \
    || { echo "setup: the environment is incomplete; see the messages above" >&2; exit 1; }
echo "$want" > "$stamp"
echo "setup: .venv ready"
