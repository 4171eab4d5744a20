"""What the API, the workers and the command line share, in three rooms, each allowed to import only the rooms above it here.

- `domain`: what a transfer is (its parameters, presets, schedule and memory model) and the errors the service
  refuses with. Standard library only; the one room the engine imports.
- `adapters`: how the service reaches the outside: settings, the database (engine, sessions, tables, migrations),
  file and object storage, logs, the pictures people upload and the files the service writes, keys on disk.
- `service`: what the service does, as functions over a database session: jobs, leases, limits, API keys,
  webhooks and their deliveries, the fleet, statistics, retention, dashboard sessions.

`tests/test_dependencies.py` checks each room's rule by folder.
"""
