"""The scheduler: jobs from ``[schedule]``, a last-run table in SQLite, run only by the lease holder."""
