#!/usr/bin/env bash
# System setup for the CSMS: PostgreSQL + TimescaleDB, Mosquitto, Prometheus and
# the project's virtualenv at .venv. Idempotent: when everything is in place it
# only checks and returns in about a second.
#
# Usage: deploy/setup.sh            (as root, or as a user with sudo)
#        CSMS_SETUP_SKIP_SYSTEM=1 deploy/setup.sh   (only the virtualenv)
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="$REPO_DIR/.csms-setup"
TSDB_SERIES="2.19"           # Debian trixie ships timescaledb 2.19.x (Apache-2 edition)
SYSTEM_PACKAGES=(postgresql postgresql-contrib mosquitto prometheus haproxy)

say() { printf '[setup] %s\n' "$*" >&2; }

if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo); fi
as_root() { "${SUDO[@]}" "$@"; }

missing_packages() {
    local pkg out=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || out+=("$pkg")
    done
    echo "${out[@]:-}"
}

APT_UPDATED=0
apt_install() {
    local missing
    missing="$(missing_packages "$@")"
    [ -z "$missing" ] && return 0
    say "installing Debian packages: $missing"
    if [ "$APT_UPDATED" -eq 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        APT_UPDATED=1
    fi
    # shellcheck disable=SC2086
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

pg_major() {
    local v
    v="$(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1)"
    echo "$v"
}

disable_service() {
    # The distribution packages start system-wide services; the project runs its
    # own private instances, so the stock ones are stopped to free the ports.
    local svc="$1"
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        as_root systemctl disable --now "$svc" >/dev/null 2>&1 || true
    elif command -v service >/dev/null 2>&1; then
        as_root service "$svc" stop >/dev/null 2>&1 || true
    fi
}

install_system() {
    local fresh
    fresh="$(missing_packages "${SYSTEM_PACKAGES[@]}")"
    if [ -n "$fresh" ]; then
        say "PostgreSQL, Mosquitto and Prometheus come from the distribution"
        apt_install "${SYSTEM_PACKAGES[@]}"
        case " $fresh " in *" mosquitto "*) disable_service mosquitto ;; esac
        case " $fresh " in *" prometheus "*) disable_service prometheus; disable_service prometheus-node-exporter ;; esac
        case " $fresh " in *" haproxy "*) disable_service haproxy ;; esac
    fi
    local major pkglib
    major="$(pg_major)"
    [ -n "$major" ] || { say "no PostgreSQL found after install"; exit 1; }
    pkglib="/usr/lib/postgresql/$major/lib"
    if ls "$pkglib"/timescaledb*.so >/dev/null 2>&1; then
        return 0
    fi
    # Prefer the distribution's binary package (Debian 13 and later ship one).
    if apt-cache show "postgresql-$major-timescaledb" >/dev/null 2>&1; then
        say "installing TimescaleDB from the distribution (postgresql-$major-timescaledb)"
        apt_install "postgresql-$major-timescaledb"
        return 0
    fi
    build_timescaledb "$major"
}

build_timescaledb() {
    local major="$1"
    say "TimescaleDB is not packaged for PostgreSQL $major here: building the Apache-2 edition"
    say "from Debian's own source package (suite trixie, $TSDB_SERIES.x); takes about a minute"
    # debian-archive-keyring verifies Debian's source index (already present on Debian; on Ubuntu
    # it is a universe package).
    apt_install "postgresql-server-dev-$major" cmake gcc make dpkg-dev libssl-dev libkrb5-dev debian-archive-keyring
    local apt_dir="$STATE_DIR/apt" build_dir="$STATE_DIR/build"
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$build_dir"
    # A private apt configuration with a deb-src entry, so the system's sources stay untouched.
    cat > "$apt_dir/sources.list" <<SRC
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main
SRC
    local apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
                    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
                    -o "APT::Sandbox::User=root")
    apt-get "${apt_opts[@]}" update -qq
    (cd "$build_dir" && rm -rf timescaledb-* && apt-get "${apt_opts[@]}" source -qq --download-only timescaledb \
        && dpkg-source -x --no-check timescaledb_*.dsc >/dev/null)
    local src
    src="$(find "$build_dir" -maxdepth 1 -type d -name 'timescaledb-*' | head -1)"
    [ -n "$src" ] || { say "timescaledb source not found"; exit 1; }
    case "$(basename "$src")" in timescaledb-"$TSDB_SERIES".*) ;; *) say "note: got $(basename "$src"), expected $TSDB_SERIES.x" ;; esac
    (cd "$src" && cmake -S . -B build -DAPACHE_ONLY=1 -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF \
        -DWARNINGS_AS_ERRORS=OFF -DPG_CONFIG="/usr/lib/postgresql/$major/bin/pg_config" >/dev/null \
        && cmake --build build -j"$(nproc)" >/dev/null && as_root cmake --install build >/dev/null)
    say "TimescaleDB installed into /usr/lib/postgresql/$major/lib"
}

install_venv() {
    local stamp="$REPO_DIR/.venv/.csms-installed" want
    want="$(cat "$REPO_DIR/pyproject.toml" | sha256sum | cut -d' ' -f1)"
    if [ -x "$REPO_DIR/.venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    say "creating the virtualenv at .venv and installing the project with its test extras"
    if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        say "python3 cannot create virtualenvs here: installing python3-venv"
        apt_install python3-venv
    fi
    python3 -m venv "$REPO_DIR/.venv"
    "$REPO_DIR/.venv/bin/python" -m pip install -q --upgrade pip
    "$REPO_DIR/.venv/bin/python" -m pip install -q -e "$REPO_DIR[test]"
    echo "$want" > "$stamp"
}

mkdir -p "$STATE_DIR"
if [ "${CSMS_SETUP_SKIP_SYSTEM:-0}" != "1" ]; then
    install_system
fi
install_venv
