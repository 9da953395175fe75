"""ETL step logic: plain functions with pydantic parameter models, usable without the API."""
