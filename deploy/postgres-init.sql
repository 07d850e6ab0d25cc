-- The databases besides MLflow's own (created by POSTGRES_DB): its users and permissions, and the
-- Optuna studies every worker shares.
CREATE DATABASE mlflow_auth;
CREATE DATABASE optuna;
