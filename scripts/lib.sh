# Shared by scripts/up and scripts/test: the virtualenv and the local services.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf '\033[31merror:\033[0m %s\n' "$*" >&2; exit 1; }

ensure_venv() {
    local python
    python="$(command -v python3.11 || command -v python3 || true)"
    [ -n "$python" ] || die "Python 3.11 is needed (python3.11 or python3 on PATH)."
    "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
        || die "Python 3.11 is needed; $python is $("$python" -V 2>&1)."
    if [ ! -x "$PY" ]; then
        say "Creating the virtualenv in .venv"
        "$python" -m venv "$VENV"
    fi
    local stamp="$VENV/.requirements.sha256" want
    want="$(sha256sum "$ROOT/requirements.txt" | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        say "Installing requirements"
        "$PY" -m pip install --quiet --disable-pip-version-check --upgrade pip
        "$PY" -m pip install --quiet --disable-pip-version-check -r "$ROOT/requirements.txt"
        echo "$want" > "$stamp"
    fi
    # The `sched` command (pyproject.toml's [project.scripts]), installed from this
    # checkout; again when pyproject.toml changes or the checkout moved.
    local project_stamp="$VENV/.project.sha256"
    want="$(cat "$ROOT/pyproject.toml" <(echo "$ROOT") | sha256sum | cut -d' ' -f1)"
    if [ ! -x "$VENV/bin/sched" ] || [ "$(cat "$project_stamp" 2>/dev/null)" != "$want" ]; then
        say "Installing the sched command"
        "$PY" -m pip install --quiet --disable-pip-version-check --no-deps \
            --editable "$ROOT"
        echo "$want" > "$project_stamp"
    fi
}

ensure_postgres() {
    command -v pg_isready >/dev/null || die "PostgreSQL client tools are missing: apt-get install postgresql"
    if ! pg_isready -q -h 127.0.0.1 -p 5432; then
        command -v pg_ctlcluster >/dev/null \
            || die "PostgreSQL is not running on 127.0.0.1:5432 and is not installed here: apt-get install postgresql"
        say "Starting PostgreSQL"
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
        for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
        pg_isready -q -h 127.0.0.1 -p 5432 || die "PostgreSQL did not start; see /var/log/postgresql/"
    fi
}

redis_up() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]; }

ensure_redis() {
    command -v redis-cli >/dev/null || die "Redis is missing: apt-get install redis-server"
    if ! redis_up; then
        command -v redis-server >/dev/null \
            || die "Redis is not running on 127.0.0.1:6379 and is not installed here: apt-get install redis-server"
        say "Starting Redis"
        mkdir -p /var/lib/redis /var/log/redis
        redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
            --dir /var/lib/redis --logfile /var/log/redis/ci.log
        for _ in $(seq 30); do redis_up && break; sleep 0.5; done
        redis_up || die "Redis did not start; see /var/log/redis/ci.log"
    fi
}

rabbitmq_up() { rabbitmqctl -q await_startup --timeout 5 >/dev/null 2>&1; }

# RabbitMQ, for the suite's RabbitMQ variants (tests/e2e/test_broker_loss.py,
# tests/nodes/test_rabbitmq_node_users.py): started where it is installed and down. Where
# it is not installed those tests are skipped, saying why; nothing else needs it.
ensure_rabbitmq() {
    if ! command -v rabbitmq-server >/dev/null || ! command -v rabbitmqctl >/dev/null; then
        say "RabbitMQ is not installed: its broker tests will be skipped (apt-get install rabbitmq-server)"
        return 0
    fi
    rabbitmq_up && return 0
    say "Starting RabbitMQ"
    rabbitmq-server -detached >/dev/null 2>&1 || true
    for _ in $(seq 60); do rabbitmq_up && break; sleep 1; done
    rabbitmq_up || die "RabbitMQ did not start; see /var/log/rabbitmq/"
}

# promtool checks and unit-tests deploy/prometheus/, and tests/e2e/test_prometheus.py runs a
# real prometheus: both come from Debian's package. Installing it must not start the
# service, so a policy-rc.d refuses every start for the length of the install.
# Debian's chromium, which the browser tests (tests/e2e/test_browser.py) drive through
# the playwright package; they are skipped, saying why, where it cannot be installed.
ensure_chromium() {
    [ -x /usr/bin/chromium ] && return 0
    command -v apt-get >/dev/null || { say "chromium is missing and apt-get is not here: the browser tests will be skipped"; return 0; }
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || { say "Installing chromium needs root: the browser tests will be skipped"; return 0; }
        sudo="sudo"
    fi
    say "Installing chromium (Debian package) for the browser tests"
    $sudo apt-get update -qq \
        && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
        || say "apt-get install chromium failed: the browser tests will be skipped"
}

# iproute2 (`ip netns`) and iptables, for the partition tests (tests/e2e/test_partitions.py),
# which run node agents in network namespaces of their own; they are skipped, saying
# why, where these cannot be installed or namespaces cannot be made (not root).
ensure_netns_tools() {
    command -v ip >/dev/null && command -v iptables >/dev/null && return 0
    command -v apt-get >/dev/null || { say "ip or iptables is missing and apt-get is not here: the partition tests will be skipped"; return 0; }
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || { say "Installing iptables needs root: the partition tests will be skipped"; return 0; }
        sudo="sudo"
    fi
    say "Installing iproute2 and iptables (Debian packages) for the partition tests"
    $sudo apt-get update -qq \
        && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 iptables >/dev/null \
        || say "apt-get install iproute2 iptables failed: the partition tests will be skipped"
}

ensure_prometheus() {
    command -v promtool >/dev/null && command -v prometheus >/dev/null && return 0
    command -v apt-get >/dev/null \
        || die "promtool and prometheus are missing: install Prometheus 2.x (Debian: apt-get install prometheus)"
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || die "Installing prometheus needs root: apt-get install prometheus"
        sudo="sudo"
    fi
    say "Installing prometheus (Debian package; the service is not started)"
    local policy=/usr/sbin/policy-rc.d made_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
        $sudo chmod 755 "$policy"
        made_policy=1
    fi
    local status=0
    $sudo apt-get update -qq \
        && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends prometheus >/dev/null \
        || status=$?
    [ -z "$made_policy" ] || $sudo rm -f "$policy"
    [ "$status" = 0 ] || die "apt-get install prometheus failed"
    # With systemd, the package enables the unit for the next boot; keep it off.
    if [ -d /run/systemd/system ]; then
        $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
    command -v promtool >/dev/null || die "promtool is still missing after installing prometheus"
}

# The default database (DATABASE_URL unset) is created on first use.
ensure_database() {
    [ -z "${DATABASE_URL:-}" ] || return 0
    if ! psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'scheduler'" | grep -q 1; then
        say "Creating the database 'scheduler'"
        createdb -h 127.0.0.1 -U postgres scheduler
    fi
}

# Grafana's published dashboard types (npm's @grafana/schema) and TypeScript, which the
# dashboard test checks deploy/grafana/dashboard.json with; installed from the lock file.
ensure_grafana_schema() {
    local dir="$ROOT/tests/deploy/grafana_schema"
    command -v npm >/dev/null || die "npm is missing (the dashboard test needs it): apt-get install npm"
    local stamp="$dir/node_modules/.package-lock.sha256" want
    want="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        say "Installing Grafana's dashboard schema (npm ci in tests/deploy/grafana_schema)"
        npm ci --silent --no-audit --no-fund --prefix "$dir"
        echo "$want" > "$stamp"
    fi
}
