"""Clones, templates and snapshots: virt-clone's and virsh snapshot-*'s jobs, done through libvirt only."""
