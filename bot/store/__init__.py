"""The SQLite file and its tables: the database, audit trail, locks, freezes and approval requests."""
