-- Runs once, when the PostgreSQL volume is first initialised (docker-entrypoint-initdb.d), as
-- $POSTGRES_USER. The tracking database itself (`mlflow`) is POSTGRES_DB.
--   mlflow_auth: MLflow basic-auth users (must not share the tracking database: MLflow treats
--                foreign tables there as a non-empty schema and tries to migrate it)
--   optuna:      the Optuna studies of the collapse pruner (`ablate launch --optuna-storage`)
CREATE DATABASE mlflow_auth;
CREATE DATABASE optuna;
