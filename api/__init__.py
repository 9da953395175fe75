"""The HTTP service that runs ETL steps as tasks shared by several worker processes."""
