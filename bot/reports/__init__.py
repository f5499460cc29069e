"""Reports as data (status digest, autostart and backup health, migration checks); adapters render them."""
