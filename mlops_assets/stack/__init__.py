"""The production-shaped stack on one machine: PostgreSQL, Redis, MLflow, Dagster, serving."""
