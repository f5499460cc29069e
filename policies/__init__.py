"""Who may do what, where. Decides from names and roles only; never touches libvirt."""
