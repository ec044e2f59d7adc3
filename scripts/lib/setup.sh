# Shared set-up for scripts/test and scripts/quickstart. Each function checks first and
# installs only what is missing, so a second run does nothing but the checks.
# Sourced, not run: expects `set -euo pipefail` and the working directory at the repo root.

GANTRY_ROOT=$(pwd)
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
# The lock that serialises everything that must own 127.0.0.1:5000 (the SDK's "local"
# environment): the SDK tests and the quickstart. A fixed path, shared by every user.
GANTRY_PORT_LOCK=/tmp/gantry-port-5000.lock
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
  if [ -n "$SUDO" ] && ! command -v sudo >/dev/null; then
    die "missing ${missing[*]}: install them as root (apt-get install ${missing[*]}), or run this as root"
  fi
  log "installing Debian packages: ${missing[*]}"
  if [ "$APT_UPDATED" -eq 0 ]; then $SUDO apt-get update -qq; APT_UPDATED=1; fi
  $SUDO env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
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

# ensure_rust: rustup and the toolchain pinned in rust-toolchain.toml, with rustfmt and
# clippy. A Debian `cargo` package does not count: it cannot follow the pin.
ensure_rust() {
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
  if ! command -v rustup >/dev/null; then
    log "installing Rust with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain none
    . "$HOME/.cargo/env"
  fi
  local channel
  channel=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
  [ -n "$channel" ] || die "rust-toolchain.toml names no channel"
  if ! rustup run "$channel" cargo --version >/dev/null 2>&1; then
    log "installing the Rust toolchain $channel"
    rustup toolchain install "$channel" --profile minimal --component rustfmt,clippy
  fi
  local installed
  installed=$(rustup component list --installed --toolchain "$channel")
  grep -q '^rustfmt' <<<"$installed" || rustup component add --toolchain "$channel" rustfmt
  grep -q '^clippy' <<<"$installed" || rustup component add --toolchain "$channel" clippy
  cargo --version >/dev/null || die "cargo does not run; see the output above"
}

# lock_port_5000: takes the lock on 127.0.0.1:5000 (file descriptor 9) for this
# script's lifetime, waiting for a test run that holds it.
lock_port_5000() {
  command -v flock >/dev/null || apt_install util-linux
  if [ ! -e "$GANTRY_PORT_LOCK" ]; then
    (umask 000 && : >>"$GANTRY_PORT_LOCK") 2>/dev/null || true
  fi
  exec 9<"$GANTRY_PORT_LOCK" || die "cannot open $GANTRY_PORT_LOCK"
  flock -w 900 9 || die "port 5000 stayed locked by another run for 15 minutes"
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
    # Where an init system runs, installing the package started the broker already.
    local i
    for ((i = 0; i < 10; i++)); do port_open 5672 && break; sleep 1; done
    if ! port_open 5672; then
      log "starting RabbitMQ"
      $SUDO sh -c 'rabbitmq-server -detached' || true
      wait_for_port 5672 60 RabbitMQ
    fi
  fi
  command -v rabbitmq-plugins >/dev/null || [ -x /usr/sbin/rabbitmq-plugins ] \
    || die "a broker listens on 127.0.0.1:5672 but rabbitmq-plugins is not here to enable its management API on 15672; enable it where the broker runs"
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
    [ -d /etc/postgresql ] || die "postgresql is installed but /etc/postgresql is missing"
    local version
    version=$(ls /etc/postgresql | sort -n | tail -1)
    [ -n "$version" ] || die "no PostgreSQL cluster under /etc/postgresql"
    local hba="/etc/postgresql/$version/main/pg_hba.conf"
    if ! $SUDO grep -q "gantry-tests" "$hba"; then
      log "allowing trust auth on 127.0.0.1 for the tests"
      $SUDO sed -i '1i host all all 127.0.0.1/32 trust # gantry-tests' "$hba"
    fi
    # Installing the package may have started the cluster (where an init system runs):
    # then it only needs to re-read pg_hba.conf.
    if $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main status >/dev/null 2>&1; then
      log "reloading PostgreSQL $version"
      $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main reload
    else
      log "starting PostgreSQL $version"
      $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start
    fi
    wait_for_port 5432 60 PostgreSQL
  fi
  if ! psql -h 127.0.0.1 -U postgres -d test -c 'select 1' >/dev/null 2>&1; then
    command -v psql >/dev/null || apt_install postgresql-client
    psql -h 127.0.0.1 -U postgres -d postgres -c 'create database test' >/dev/null \
      || die "PostgreSQL on 127.0.0.1:5432 does not accept user postgres without a password"
  fi
}
