#!/usr/bin/env bash
# The team's MLflow tracking server: runs, params and metrics in PostgreSQL, artifacts stored and
# served by the server, users and permissions by MLflow's basic auth, HTTPS when it serves the
# network. Every secret comes from the environment or a file, none has a default, and none is
# put on a command line (`ps` shows every user's).
#
#   MLFLOW_BACKEND_URI              postgresql://mlflow@db:5432/mlflow        (required)
#   MLFLOW_AUTH_DB_URI              postgresql://mlflow@db:5432/mlflow_auth   (required; users
#                                   and permissions, a database of their own)
#   MLFLOW_DB_PASSWORD              the database password when the URIs carry none
#   MLFLOW_AUTH_ADMIN_PASSWORD      the admin user's first password                    (required)
#   MLFLOW_FLASK_SERVER_SECRET_KEY  signs the UI's sessions, e.g. `openssl rand -hex 32` (required)
#   NAME_FILE                       for each of the five above: a file holding it (a Docker secret)
#   TLS_CERT_FILE / TLS_KEY_FILE    PEM certificate (chain) and its key: the server speaks HTTPS
#                                   only (required when HOST is not a loopback address)
#   MLFLOW_AUTH_ADMIN_USERNAME      default admin
#   ARTIFACTS_DIR                   default ./mlartifacts (or an s3://, gs://, … destination)
#   HOST / PORT                     default 127.0.0.1 / 5000
#   ALLOWED_HOSTS                   the names clients use, e.g. "mlflow.example.org,10.0.0.5:5000"
#                                   (required when HOST is not a loopback address)
#   WORKERS                         default 4
#
# The database role is the MLflow server's own (deploy/postgres-init.sh creates it), never a
# superuser. Workers then use: MLFLOW_TRACKING_URI=https://HOST:PORT, MLFLOW_TRACKING_USERNAME and
# MLFLOW_TRACKING_PASSWORD (a user the admin created), and
# TUNELAB_OPTUNA_STORAGE=postgresql://tunelab_worker:…@db:5432/optuna.
set -euo pipefail

need() { [ -n "${!1:-}" ] || { echo "error: set $1 ($2)" >&2; exit 2; }; }
# NAME from the environment, else the content of the file NAME_FILE names
secret() {
  local file_var="$1_FILE"
  if [ -n "${!file_var:-}" ]; then
    [ -r "${!file_var}" ] || { echo "error: cannot read ${!file_var} ($file_var)" >&2; exit 2; }
    printf -v "$1" '%s' "$(cat "${!file_var}")"
  fi
  unset "$file_var"
}
for name in MLFLOW_BACKEND_URI MLFLOW_AUTH_DB_URI MLFLOW_DB_PASSWORD MLFLOW_AUTH_ADMIN_PASSWORD \
  MLFLOW_FLASK_SERVER_SECRET_KEY; do
  secret "$name"
done
need MLFLOW_BACKEND_URI "postgresql://mlflow@host:5432/mlflow, or MLFLOW_BACKEND_URI_FILE"
need MLFLOW_AUTH_DB_URI "postgresql://mlflow@host:5432/mlflow_auth, or MLFLOW_AUTH_DB_URI_FILE"
need MLFLOW_AUTH_ADMIN_PASSWORD "the admin's first password, or MLFLOW_AUTH_ADMIN_PASSWORD_FILE; there is no default"
need MLFLOW_FLASK_SERVER_SECRET_KEY "e.g. \$(openssl rand -hex 32), or MLFLOW_FLASK_SERVER_SECRET_KEY_FILE"
HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-5000}"
ARTIFACTS_DIR="${ARTIFACTS_DIR:-./mlartifacts}"
case "$HOST" in
  127.*|localhost|::1) ALLOWED_HOSTS="${ALLOWED_HOSTS:-localhost,127.0.0.1,localhost:$PORT,127.0.0.1:$PORT}" ;;
  *) need ALLOWED_HOSTS "the host names clients reach this server by"
     need TLS_CERT_FILE "HOST=$HOST serves the network, where basic auth's passwords must not cross in clear; or put a TLS proxy in front and bind HOST to loopback"
     need TLS_KEY_FILE "the certificate's private key" ;;
esac
tls=()
if [ -n "${TLS_CERT_FILE:-}${TLS_KEY_FILE:-}" ]; then
  need TLS_CERT_FILE "the PEM certificate that goes with TLS_KEY_FILE"
  need TLS_KEY_FILE "the private key of TLS_CERT_FILE"
  for f in "$TLS_CERT_FILE" "$TLS_KEY_FILE"; do
    [ -r "$f" ] || { echo "error: cannot read $f" >&2; exit 2; }
  done
  tls=(--uvicorn-opts "--ssl-certfile $(printf %q "$TLS_CERT_FILE") --ssl-keyfile $(printf %q "$TLS_KEY_FILE")")
fi

# the auth settings and the database password: files only this user can read, removed on exit
conf_dir="$(mktemp -d)"
trap 'rm -rf "$conf_dir"' EXIT
umask 077
if [ -n "${MLFLOW_DB_PASSWORD:-}" ]; then  # libpq's password file: host:port:database:user:password
  escaped="${MLFLOW_DB_PASSWORD//\\/\\\\}"
  printf '*:*:*:*:%s\n' "${escaped//:/\\:}" > "$conf_dir/pgpass"
  export PGPASSFILE="$conf_dir/pgpass"
fi
unset MLFLOW_DB_PASSWORD escaped
cat > "$conf_dir/basic_auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = ${MLFLOW_AUTH_DB_URI//%/%%}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
export MLFLOW_AUTH_CONFIG_PATH="$conf_dir/basic_auth.ini"
# mlflow server and its workers read the store and the secrets from their environment
export MLFLOW_BACKEND_STORE_URI="$MLFLOW_BACKEND_URI" MLFLOW_AUTH_ADMIN_PASSWORD \
  MLFLOW_FLASK_SERVER_SECRET_KEY
unset MLFLOW_BACKEND_URI MLFLOW_AUTH_DB_URI

mlflow server \
  --artifacts-destination "$ARTIFACTS_DIR" --serve-artifacts \
  --host "$HOST" --port "$PORT" --workers "${WORKERS:-4}" \
  --allowed-hosts "$ALLOWED_HOSTS" "${tls[@]}" \
  --app-name basic-auth &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server; rm -rf "$conf_dir"' EXIT INT TERM
wait $server
