"""Embedded demo fleet: libvirt test-driver XML, one file per host."""
