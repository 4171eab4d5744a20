"""What the service does, as functions over a database session; imports `adapters` and `domain`, never the API, the worker or the CLI."""
