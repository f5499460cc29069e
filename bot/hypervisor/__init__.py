"""All that talks to libvirt: connection pool, fleet, state rules, lifecycle, console, screenshots, state events."""
