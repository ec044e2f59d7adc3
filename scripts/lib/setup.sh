# Shared set-up for scripts/test and scripts/quickstart. Each function checks first and
# installs only what is missing, so a second run does nothing but the checks.
# Sourced, not run: expects `set -euo pipefail` and the working directory at the repo root.

GANTRY_ROOT=$(pwd)
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
APT_UPDATED=0

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# apt_install PKG...: installs the Debian packages that are not installed yet.
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
  log "installing Debian packages: ${missing[*]}"
  if [ "$APT_UPDATED" -eq 0 ]; then $SUDO apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# port_open PORT: whether something listens on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for_port PORT SECONDS NAME
wait_for_port() {
  local i
  for ((i = 0; i < $2 * 2; i++)); do port_open "$1" && return 0; sleep 0.5; done
  die "$3 did not start listening on 127.0.0.1:$1 within $2 s"
}

# ensure_build_tools: a C compiler and pkg-config for crates that build C code.
ensure_build_tools() {
  command -v cc >/dev/null && command -v curl >/dev/null && command -v pkg-config >/dev/null && return 0
  apt_install build-essential curl ca-certificates pkg-config
}

# ensure_rust: rustup and the toolchain pinned in rust-toolchain.toml, with rustfmt and clippy.
ensure_rust() {
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
  if ! command -v rustup >/dev/null && ! command -v cargo >/dev/null; then
    log "installing Rust with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain none
    . "$HOME/.cargo/env"
  fi
  # Reading rust-toolchain.toml makes rustup install the pinned toolchain and components.
  cargo --version >/dev/null || die "cargo does not run; see the output above"
  cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
  cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
}

# world_traversable DIR: whether every directory from / down to DIR lets other users in,
# so that local test users (and the UEPs that run as them) can use what lies there.
world_traversable() {
  local dir
  dir=$(cd "$1" && pwd -P)
  while [ "$dir" != "/" ]; do
    case "$(stat -c %A "$dir")" in *x | *t) ;; *) return 1 ;; esac
    dir=$(dirname "$dir")
  done
}

# The Python the venv is made from: Debian's, which every local user can run (a
# pyenv or conda Python under root's home is not reachable by the tests' local users).
base_python() {
  if [ -x /usr/bin/python3 ]; then echo /usr/bin/python3; else command -v python3; fi
}

# ensure_venv: a venv with the pinned Globus Compute packages, at $GANTRY_TEST_VENV,
# else .venv in the checkout, or /var/tmp/gantry-test-venv when the checkout is not
# reachable by other users. Exports GANTRY_TEST_VENV for the tests.
ensure_venv() {
  if [ -z "${GANTRY_TEST_VENV:-}" ]; then
    if world_traversable "$GANTRY_ROOT"; then
      GANTRY_TEST_VENV="$GANTRY_ROOT/.venv"
    else
      GANTRY_TEST_VENV=/var/tmp/gantry-test-venv
    fi
  fi
  export GANTRY_TEST_VENV
  local venv="$GANTRY_TEST_VENV"
  command -v python3 >/dev/null || [ -x /usr/bin/python3 ] || apt_install python3
  local python
  python=$(base_python)
  local stamp="$venv/.gantry-requirements"
  local want
  want=$( (echo "$python"; cat tests/python-requirements.txt tests/python-constraints.txt) | sha256sum | cut -d' ' -f1)
  if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return 0; fi
  log "creating the Python venv at $venv from $python"
  rm -rf "$venv"
  if ! "$python" -m venv "$venv" 2>/dev/null; then
    rm -rf "$venv"
    apt_install python3-venv
    "$python" -m venv "$venv"
  fi
  log "installing the pinned Globus Compute packages into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check \
    -r tests/python-requirements.txt -c tests/python-constraints.txt
  chmod -R a+rX "$venv"
  echo "$want" >"$stamp"
}

# ensure_rabbitmq: a broker on 127.0.0.1:5672 (guest/guest) with the management API
# on 15672, which the service uses to give each endpoint its own credentials.
ensure_rabbitmq() {
  if ! port_open 5672; then
    apt_install rabbitmq-server
    log "starting RabbitMQ"
    $SUDO sh -c 'rabbitmq-server -detached' || true
    wait_for_port 5672 60 RabbitMQ
  fi
  if ! port_open 15672; then
    log "enabling RabbitMQ's management plugin"
    $SUDO rabbitmq-plugins enable rabbitmq_management >/dev/null
    wait_for_port 15672 60 "RabbitMQ management"
  fi
}

# ensure_postgres: PostgreSQL on 127.0.0.1:5432 with trust auth and a database `test`.
ensure_postgres() {
  if ! port_open 5432; then
    apt_install postgresql
    local version
    version=$(ls /etc/postgresql | sort -n | tail -1)
    local hba="/etc/postgresql/$version/main/pg_hba.conf"
    if ! $SUDO grep -q "gantry-tests" "$hba"; then
      log "allowing trust auth on 127.0.0.1 for the tests"
      $SUDO sed -i '1i host all all 127.0.0.1/32 trust # gantry-tests' "$hba"
    fi
    log "starting PostgreSQL $version"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start
    wait_for_port 5432 60 PostgreSQL
  fi
  if ! psql -h 127.0.0.1 -U postgres -d test -c 'select 1' >/dev/null 2>&1; then
    command -v psql >/dev/null || apt_install postgresql-client
    psql -h 127.0.0.1 -U postgres -d postgres -c 'create database test' >/dev/null \
      || die "PostgreSQL on 127.0.0.1:5432 does not accept user postgres without a password"
  fi
}
