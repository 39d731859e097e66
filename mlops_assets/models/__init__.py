"""Model lifecycle on MLflow: registry aliases as stages, promotion and rollback."""
