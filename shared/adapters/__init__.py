"""How the service reaches the outside (settings, database, storage, logs, pictures, keys on disk); imports only `domain` of the project."""
