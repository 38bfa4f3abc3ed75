# Shared set-up steps for scripts/serve.sh and scripts/test.sh (sourced, not run).
# They install only what is missing, so a second run starts at once.

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "tagsweeper: need root (or sudo) to run: $*" >&2; return 1; fi
}

APT_UPDATED=""
apt_install() {
    # apt_install PACKAGE... : install the Debian packages given (update the lists once first).
    if [ -z "$APT_UPDATED" ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_binary() {
    # ensure_binary COMMAND PACKAGE : install PACKAGE when COMMAND is not found.
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/bin/$1" ] || apt_install "$2"
}

ensure_python() {
    # A Python 3.10+ with venv; Debian's python3-venv when the module is missing.
    command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
    if ! python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
        apt_install python3-venv python3-pip
    fi
}

ensure_venv() {
    # ensure_venv EXTRAS : a project virtualenv in .venv with tagsweeper installed (editable).
    ensure_python
    [ -x .venv/bin/python ] || python3 -m venv .venv
    local stamp=".venv/.installed-$1-$(cat pyproject.toml | cksum | cut -d' ' -f1)"
    if [ ! -e "$stamp" ]; then
        .venv/bin/python -m pip install -q --upgrade pip
        .venv/bin/python -m pip install -q -e ".$1"
        touch "$stamp"
    fi
}
