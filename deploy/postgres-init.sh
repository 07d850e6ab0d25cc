#!/usr/bin/env bash
# The team database's roles and databases, each part with the least it needs. Runs once, as the
# postgres image's init script (/docker-entrypoint-initdb.d/, as the superuser, on an empty
# cluster), or by hand against a fresh cluster with the superuser's PGHOST/PGPORT/PGPASSWORD set.
#
#   mlflow          the MLflow server's role: owns the databases mlflow (runs) and mlflow_auth
#                   (users, permissions); nothing else
#   tunelab_worker  the workers' role: connects to optuna only, and creates Optuna's tables there
#
# Neither is a superuser nor may create roles or databases; only the superuser (POSTGRES_USER)
# reaches every database, and no service or worker connects as it. The passwords come from the
# environment or from files (Docker secrets), never from the command line:
#
#   MLFLOW_DB_PASSWORD or MLFLOW_DB_PASSWORD_FILE                   the mlflow role's
#   TUNELAB_WORKER_DB_PASSWORD or TUNELAB_WORKER_DB_PASSWORD_FILE   the tunelab_worker role's
set -euo pipefail

# NAME from the environment, else the content of the file NAME_FILE names; required
secret() {
  local file_var="$1_FILE"
  if [ -n "${!file_var:-}" ]; then
    [ -r "${!file_var}" ] || { echo "error: cannot read ${!file_var} ($file_var)" >&2; exit 2; }
    printf -v "$1" '%s' "$(cat "${!file_var}")"
  fi
  [ -n "${!1:-}" ] || { echo "error: set $1 or $file_var ($2)" >&2; exit 2; }
  export "${1?}"
}
secret MLFLOW_DB_PASSWORD "the MLflow server's database password"
secret TUNELAB_WORKER_DB_PASSWORD "the workers' database password"

# psql reads the passwords from its environment (\getenv): none is in its command line, and the
# session logs no statement, so none reaches the server's log either
psql -v ON_ERROR_STOP=1 --quiet --no-psqlrc --username "${POSTGRES_USER:-postgres}" --dbname postgres <<'SQL'
SET log_statement = 'none';
SET log_min_error_statement = 'panic';
\getenv mlflow_password MLFLOW_DB_PASSWORD
\getenv worker_password TUNELAB_WORKER_DB_PASSWORD
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE ROLE tunelab_worker LOGIN PASSWORD :'worker_password';
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE mlflow_auth OWNER mlflow;
CREATE DATABASE optuna;
-- every role may connect to every new database unless told otherwise: only the owners may
REVOKE ALL ON DATABASE mlflow, mlflow_auth, optuna, postgres, template1 FROM PUBLIC;
GRANT CONNECT ON DATABASE optuna TO tunelab_worker;
\connect optuna
-- PostgreSQL 15 gives CREATE on schema public to the database's owner only
GRANT USAGE, CREATE ON SCHEMA public TO tunelab_worker;
SQL
