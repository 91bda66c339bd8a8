#!/usr/bin/env bash
# Install the Debian/Ubuntu system libraries that phy (PyQt5 5.15 wheels) needs, if missing.
#
#   scripts/install-system-deps.sh               GUI libraries (used by `make demo`)
#   scripts/install-system-deps.sh --screenshot  the same plus Xvfb, for screenshots of the real
#                                                GUI without a display (`make screenshot-deps`)
#   scripts/install-system-deps.sh --phy20       the same plus QtWebEngine's libraries, for the
#                                                tests in phy 2.0b5 under Xvfb (`make test`)
#   scripts/install-system-deps.sh --check       only report what is missing; exit 1 if anything is
#
# Nothing is installed when everything is present (a dpkg query, well under a second).  When
# something is missing it runs `apt-get update` and `apt-get install --no-install-recommends`
# non-interactively, as root or through sudo.  If it cannot install (no apt-get, no root and no
# usable sudo, no network), it says what is missing and exits 0 so the caller can go on: the Python
# packages still install, and Qt then names the library it could not load.
#
# The list was found on a bare Debian 12 (debootstrap minbase + python3-venv) with the PyQt5
# 5.15.11 / Qt 5.15 wheels: `ldd` on PyQt5's QtGui/QtWidgets/QtOpenGL modules, libQt5*.so and the
# offscreen/xcb platform plugins, then a QApplication, `import phy.apps.template` and a
# QOpenGLWidget, offscreen and in a real X window under Xvfb (llvmpipe software rendering).
# - QT_QPA_PLATFORM=offscreen (the test suite) needs only libgl1, libglib2.0-0 and libfontconfig1;
# - a real window (xcb platform plugin, phy's OpenGL views) needs the rest.
# phy 2.0b5's tables are QtWebEngine pages: the PyQtWebEngine 5.15 wheels also need NSS, ALSA and a
# few X extensions (`ldd` on libQt5WebEngineCore.so.5 and QtWebEngineProcess, on Debian 12).
# "a|b" names alternatives (Debian 13 renamed some libraries with a t64 suffix).
set -euo pipefail

MODE=gui
for arg in "$@"; do
    case "$arg" in
        --screenshot) MODE=screenshot ;;
        --phy20) MODE=phy20 ;;
        --check) CHECK_ONLY=1 ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install-system-deps: unknown option $arg" >&2; exit 2 ;;
    esac
done
CHECK_ONLY=${CHECK_ONLY:-0}

# package  soname it provides (checked with ldconfig where there is no dpkg), one per line
GUI_PACKAGES="
libgl1               libGL.so.1
libgl1-mesa-dri      -
libegl1              libEGL.so.1
libglib2.0-0         libgthread-2.0.so.0
libfontconfig1       libfontconfig.so.1
fonts-dejavu-core    -
libdbus-1-3          libdbus-1.so.3
libxkbcommon0        libxkbcommon.so.0
libxkbcommon-x11-0   libxkbcommon-x11.so.0
libx11-6             libX11.so.6
libx11-xcb1          libX11-xcb.so.1
libxext6             libXext.so.6
libxcb1              libxcb.so.1
libxcb-glx0          libxcb-glx.so.0
libxcb-icccm4        libxcb-icccm.so.4
libxcb-image0        libxcb-image.so.0
libxcb-keysyms1      libxcb-keysyms.so.1
libxcb-randr0        libxcb-randr.so.0
libxcb-render0       libxcb-render.so.0
libxcb-render-util0  libxcb-render-util.so.0
libxcb-shape0        libxcb-shape.so.0
libxcb-shm0          libxcb-shm.so.0
libxcb-sync1         libxcb-sync.so.1
libxcb-xfixes0       libxcb-xfixes.so.0
libxcb-xinerama0     libxcb-xinerama.so.0
libxcb-xkb1          libxcb-xkb.so.1
"
SCREENSHOT_PACKAGES="
xvfb                 -
xauth                -
"
WEBENGINE_PACKAGES="
libnss3              libnss3.so
libnspr4             libnspr4.so
libasound2t64|libasound2  libasound.so.2
libxcomposite1       libXcomposite.so.1
libxdamage1          libXdamage.so.1
libxrandr2           libXrandr.so.2
libxtst6             libXtst.so.6
libxrender1          libXrender.so.1
libxfixes3           libXfixes.so.3
"

wanted=$GUI_PACKAGES
[ "$MODE" = screenshot ] && wanted="$GUI_PACKAGES$SCREENSHOT_PACKAGES"
[ "$MODE" = phy20 ] && wanted="$GUI_PACKAGES$SCREENSHOT_PACKAGES$WEBENGINE_PACKAGES"

say() { echo "install-system-deps: $*"; }

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
    while read -r pkgs _; do
        [ -n "$pkgs" ] || continue
        found=0
        for pkg in ${pkgs//|/ }; do
            if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
                found=1
            fi
        done
        [ "$found" = 1 ] || missing+=("$pkgs")
    done <<<"$wanted"
else
    # Not Debian: we cannot name packages for this system; report the missing libraries instead.
    libs=$(ldconfig -p 2>/dev/null || true)
    while read -r pkg soname; do
        [ -n "$pkg" ] && [ "$soname" != - ] || continue
        grep -q "$soname" <<<"$libs" || missing+=("$soname")
    done <<<"$wanted"
    if [ ${#missing[@]} -gt 0 ]; then
        say "no dpkg here; install these libraries with your package manager: ${missing[*]}"
    fi
    [ "$CHECK_ONLY" = 1 ] && [ ${#missing[@]} -gt 0 ] && exit 1
    exit 0
fi

# `python3 -m venv` needs Debian's python3-venv when python3 is the system one (/usr/bin).
PY=${PYTHON:-python3}
if PYPATH=$(command -v "$PY" 2>/dev/null); then
    case "$(readlink -f "$PYPATH")" in
        /usr/bin/*)
            if ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then
                ver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
                missing+=("python$ver-venv")
            fi ;;
    esac
fi

if [ ${#missing[@]} -eq 0 ]; then
    say "all system libraries present ($MODE)"
    exit 0
fi
say "missing: ${missing[*]}"
[ "$CHECK_ONLY" = 1 ] && exit 1

if ! command -v apt-get >/dev/null 2>&1; then
    say "apt-get not found; install the packages above by hand. Continuing without them."
    exit 0
fi
if [ "$(id -u)" = 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
elif command -v sudo >/dev/null 2>&1 && [ -t 0 ]; then
    say "asking sudo for your password to install them"
    SUDO=(sudo)
else
    say "not root and no usable sudo; run as root:"
    say "  apt-get install --no-install-recommends ${missing[*]}"
    say "Continuing without them (Qt will fail to load if a library is really needed)."
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
APT=(${SUDO[@]+"${SUDO[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=300)
say "installing with apt-get: ${missing[*]}"
"${APT[@]}" update >/dev/null || say "apt-get update failed"
# Of alternatives "a|b", the first one this system's package lists know.
chosen=()
for pkgs in "${missing[@]}"; do
    pick=${pkgs%%|*}
    for pkg in ${pkgs//|/ }; do
        if apt-cache show "$pkg" >/dev/null 2>&1; then pick=$pkg; break; fi
    done
    chosen+=("$pick")
done
missing=("${chosen[@]}")
if "${APT[@]}" install --no-install-recommends "${missing[@]}" </dev/null; then
    say "installed: ${missing[*]}"
else
    say "apt-get failed (see above); continuing without: ${missing[*]}"
fi
exit 0
