# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.

"""Whose data each vPMEM namespace of this host may hold.

The bytes of a vPMEM namespace belong to the server that holds it, for as
long as it holds it on this host, and to nobody after. The libvirt driver
zeroes a namespace when a server gives it up, but zeroing can fail or never
run: the host may be unreachable when a failed copy is rolled back, or
nova-compute may stop half way through a move. So the driver also records
here, per namespace, either the server whose data it may hold or that it is
known to be zeroed, and zeroes a namespace before it gives it to another
server (see ``LibvirtDriver._take_vpmems``).

A namespace with no record (a host upgraded from a release without this
record, or a namespace added later) may hold anything and is zeroed before
its first use.

The record is a small JSON file, ``vpmem-owners-<host>.json`` in
``[DEFAULT] instances_path``, named after the compute host because that
path may be shared between hosts. It is rewritten atomically on every
change, so it survives a crash of nova-compute or of the host.
"""

import os
import tempfile
import threading

from oslo_serialization import jsonutils

ZEROED = 'zeroed'


class NamespaceOwners(object):
    """The persistent record of whose data each namespace may hold.

    :param directory: the directory of the record, read when it is first
        needed, so that the driver can be created before the directory
        exists.
    :param host: the compute host the record belongs to
    """

    def __init__(self, directory, host):
        self._directory = directory
        self.host = host
        self._owners = None
        self._lock = threading.Lock()

    @property
    def path(self):
        return os.path.join(self._directory, 'vpmem-owners-%s.json' %
                            self.host)

    def _load(self):
        if self._owners is None:
            try:
                with open(self.path, 'rb') as f:
                    self._owners = jsonutils.load(f)
            except FileNotFoundError:
                self._owners = {}
        return self._owners

    def owned_by(self, owner):
        """Return the names of the namespaces recorded as owner's."""
        with self._lock:
            return {name for name, value in self._load().items()
                    if value == owner}

    def get(self, name):
        """Return whose data namespace ``name`` may hold.

        :returns: an instance UUID, ``ZEROED``, or None when unknown
        """
        with self._lock:
            return self._load().get(name)

    def set(self, names, owner):
        """Record that namespaces ``names`` hold ``owner``'s data.

        :param names: namespace names
        :param owner: an instance UUID, or ``ZEROED``
        """
        with self._lock:
            owners = dict(self._load())
            owners.update((name, owner) for name in names)
            if owners != self._owners:
                self._write(owners)
                self._owners = owners

    def _write(self, owners):
        os.makedirs(self._directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._directory,
                                   prefix='.vpmem-owners-')
        try:
            with os.fdopen(fd, 'w') as f:
                jsonutils.dump(owners, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise
        # The rename itself must reach the disk to survive a host crash.
        dir_fd = os.open(self._directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
