"""A real two-host OpenStack cloud on one machine (``tools/cloud``).

Every service is a separate process with its own config file and log under
``.workspace/stack``: MariaDB and RabbitMQ (Debian packages), Keystone,
Glance, Placement and Neutron (PyPI, the 2026.2 series), and patched Nova's
API, conductor, scheduler and two nova-compute hosts. Each compute host is a
network namespace and a mount namespace of its own, with its own sshd,
libvirtd, virtlogd, instances path and vPMEM namespaces.
"""
