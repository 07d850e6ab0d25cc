#!/usr/bin/env bash
# The team's MLflow tracking server: runs, params and metrics in PostgreSQL, artifacts stored and
# served by the server, users and permissions by MLflow's basic auth. Every secret comes from the
# environment; nothing has a default password.
#
#   MLFLOW_BACKEND_URI              postgresql://mlflow:PASSWORD@db:5432/mlflow        (required)
#   MLFLOW_AUTH_DB_URI              postgresql://mlflow:PASSWORD@db:5432/mlflow_auth   (required;
#                                   users and permissions, a database of their own)
#   MLFLOW_AUTH_ADMIN_PASSWORD      the admin user's first password                    (required)
#   MLFLOW_FLASK_SERVER_SECRET_KEY  signs the UI's sessions, e.g. `openssl rand -hex 32` (required)
#   MLFLOW_AUTH_ADMIN_USERNAME      default admin
#   ARTIFACTS_DIR                   default ./mlartifacts (or an s3://, gs://, … destination)
#   HOST / PORT                     default 127.0.0.1 / 5000
#   ALLOWED_HOSTS                   the names clients use, e.g. "mlflow.example.org,10.0.0.5:5000"
#                                   (required when HOST is not a loopback address)
#   WORKERS                         default 4
#
# Workers then use: MLFLOW_TRACKING_URI=http://HOST:PORT, MLFLOW_TRACKING_USERNAME and
# MLFLOW_TRACKING_PASSWORD (a user the admin created), TUNELAB_OPTUNA_STORAGE=postgresql://…
set -euo pipefail

need() { [ -n "${!1:-}" ] || { echo "error: set $1 ($2)" >&2; exit 2; }; }
need MLFLOW_BACKEND_URI "postgresql://user:password@host:5432/mlflow"
need MLFLOW_AUTH_DB_URI "postgresql://user:password@host:5432/mlflow_auth"
need MLFLOW_AUTH_ADMIN_PASSWORD "the admin's first password; there is no default"
need MLFLOW_FLASK_SERVER_SECRET_KEY "e.g. \$(openssl rand -hex 32)"
HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-5000}"
ARTIFACTS_DIR="${ARTIFACTS_DIR:-./mlartifacts}"
case "$HOST" in
  127.*|localhost|::1) ALLOWED_HOSTS="${ALLOWED_HOSTS:-localhost,127.0.0.1,localhost:$PORT,127.0.0.1:$PORT}" ;;
  *) need ALLOWED_HOSTS "the host names clients reach this server by" ;;
esac

# the auth settings hold a database password: a file only this user can read, removed on exit
conf_dir="$(mktemp -d)"
trap 'rm -rf "$conf_dir"' EXIT
umask 077
cat > "$conf_dir/basic_auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = $MLFLOW_AUTH_DB_URI
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
export MLFLOW_AUTH_CONFIG_PATH="$conf_dir/basic_auth.ini"

mlflow server \
  --backend-store-uri "$MLFLOW_BACKEND_URI" \
  --artifacts-destination "$ARTIFACTS_DIR" --serve-artifacts \
  --host "$HOST" --port "$PORT" --workers "${WORKERS:-4}" \
  --allowed-hosts "$ALLOWED_HOSTS" \
  --app-name basic-auth &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server; rm -rf "$conf_dir"' EXIT INT TERM
wait $server
