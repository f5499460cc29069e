"""All that talks to libvirt: pool, transports, fleet, state rules, lifecycle, console, screenshots, events."""
