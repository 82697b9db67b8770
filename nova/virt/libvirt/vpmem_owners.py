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

"""The one owner of this host's vPMEM namespaces and of their data.

The bytes of a vPMEM namespace belong to the server that holds it, for as
long as it holds it on this host, and to nobody after. Every decision the
libvirt driver makes about a namespace of this host is made here:

* which namespaces an instance gives up, and that they are zeroed then
  (``to_release`` and ``zero``);
* that a namespace given to an instance holds nothing of another one
  (``take``);
* that a namespace nobody holds any more is zeroed within one
  ``update_available_resource`` interval (``release_unheld``), whatever
  stopped the zeroing on release: a failed or crashed move, a deleted
  server whose copy never finished, an unreachable host;
* the record of whose data each namespace may hold, which every zeroing
  updates (``zero``), whichever tool zeroed;
* which namespaces were given to an instance that moves here
  (``take(incoming=True)``): the only ones the vPMEM copy's root helper
  may write, which it reads from this record.

A namespace with no record (a host upgraded from a release without this
record, or a namespace added later) may hold anything and is zeroed before
its first use.

The record is a small JSON file, ``vpmem-owners-<host>.json`` in
``[DEFAULT] state_path``, next to nova-compute's other host-local state
(``compute_id``); its format is in ``nova.virt.vpmem_stream``. It is
rewritten atomically on every change, so it survives a crash of
nova-compute or of the host.
"""

import contextlib
import functools
import os
import tempfile
import threading

from oslo_log import log as logging
from oslo_serialization import jsonutils

from nova import exception
import nova.privsep.libvirt
from nova.virt import vpmem_stream

LOG = logging.getLogger(__name__)
ZEROED = vpmem_stream.ZEROED


class NamespaceOwners(object):
    """This host's vPMEM namespaces: who may hold each, and their zeroing.

    :param directory: the directory of the record, read when it is first
        needed, so that the driver can be created before the directory
        exists.
    :param host: the compute host the record belongs to
    """

    def __init__(self, directory, host):
        self._directory = directory
        self.host = host
        self._owners = None
        self._incoming: dict[str, str] = {}
        self._lock = threading.Lock()
        # Held by take() and release_unheld() from their decision to the
        # end of their zeroing, so that the periodic release never zeroes a
        # namespace that was given to an instance meanwhile.
        self._handover = threading.Lock()
        # How many changes the record had, and the last change of each
        # namespace: release_unheld() leaves alone what changed after the
        # caller listed who holds what.
        self.generation = 0
        self._changed = {}
        # Instances whose guest is torn down only to start again here.
        self._kept = set()

    @property
    def path(self):
        return os.path.join(self._directory,
                            vpmem_stream.OWNERS_FILE % self.host)

    def _load(self):
        if self._owners is None:
            try:
                with open(self.path, 'rb') as f:
                    self._owners, self._incoming = vpmem_stream.parse_owners(
                        f.read())
            except FileNotFoundError:
                self._owners, self._incoming = {}, {}
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

    def incoming(self, name):
        """Return the instance moving here that was given ``name``, or None.
        """
        with self._lock:
            self._load()
            return self._incoming.get(name)

    def set(self, names, owner, incoming=False):
        """Record that namespaces ``names`` hold ``owner``'s data.

        :param names: namespace names
        :param owner: an instance UUID, or ``ZEROED``
        :param incoming: the instance moves here, and the vPMEM copy may
            write the namespaces until the next change of their record
        """
        with self._lock:
            owners = dict(self._load())
            owners.update((name, owner) for name in names)
            moving = dict(self._incoming)
            for name in names:
                if incoming:
                    moving[name] = owner
                else:
                    moving.pop(name, None)
            self.generation += 1
            self._changed.update((name, self.generation) for name in names)
            if (owners, moving) != (self._owners, self._incoming):
                self._write(owners, moving)
                self._owners, self._incoming = owners, moving

    def zero(self, vpmems, tool=None):
        """Zero namespaces of this host and record that they are zeroed.

        This is the only way a namespace of this host is zeroed.

        :param vpmems: ``LibvirtVPMEMDevice`` objects of this host
        :param tool: callable(vpmems) that zeroes the namespaces and
            returns the names of those it could not zero; by default, and
            when the tool cannot run at all, each one is zeroed with daxio
            through privsep
        :raises: VPMEMCleanupFailed if a namespace was not zeroed; those
            zeroed before it are recorded as zeroed
        """
        vpmems = list(vpmems)
        if not vpmems:
            return
        if tool is not None:
            try:
                dirty = set(tool(vpmems))
            except Exception as e:
                LOG.warning('Zeroing vPMEM namespaces with daxio: %s', e)
            else:
                self.set([v.name for v in vpmems if v.name not in dirty],
                         ZEROED)
                if dirty:
                    raise exception.VPMEMCleanupFailed(
                        dev=', '.join(sorted(dirty)), error='not zeroed')
                return
        zeroed = []
        try:
            for vpmem in vpmems:
                try:
                    nova.privsep.libvirt.cleanup_vpmem(vpmem.devpath)
                except Exception as e:
                    raise exception.VPMEMCleanupFailed(dev=vpmem.devpath,
                                                       error=e)
                zeroed.append(vpmem.name)
        finally:
            if zeroed:
                self.set(zeroed, ZEROED)

    @contextlib.contextmanager
    def kept(self, instance_uuid):
        """Within it, the instance gives none of its namespaces up.

        For a guest torn down only to be started again on this host (a
        hard reboot, which goes through the driver's destroy()).
        """
        self._kept.add(instance_uuid)
        try:
            yield
        finally:
            self._kept.discard(instance_uuid)

    def to_release(self, instance_uuid, on_this_host, held, vpmems_by_name):
        """Return this host's namespaces that an instance gives up.

        :param on_this_host: the instance is on this host, so ``held`` (the
            namespaces of its resources here) is what it gives up. An
            instance that is not (one evacuated from this host, a failed
            build, the destination of a failed live migration) may list the
            resources of another host, whose names can be those of other
            instances' namespaces here, so what it gives up is what this
            host recorded as its own.
        :param held: ``LibvirtVPMEMDevice`` objects of the instance's
            resources on this host
        :param vpmems_by_name: every vPMEM namespace of this host
        """
        if not vpmems_by_name or instance_uuid in self._kept:
            return []
        if on_this_host:
            return list(held)
        names = self.owned_by(instance_uuid)
        return [v for v in vpmems_by_name.values() if v.name in names]

    def take(self, instance_uuid, vpmems, empty=False, incoming=False):
        """Give vPMEM namespaces of this host to an instance.

        A namespace is given to an instance only when it is known to be
        zeroed or to hold this instance's data already. Any other namespace
        (one whose zeroing failed or never ran, or that this host has no
        record of) is zeroed first, so that no instance ever sees the data
        of another one.

        :param empty: the instance must get empty namespaces, so that one
            left with its own data by an earlier failed move is zeroed too
        :param incoming: the instance moves here: its vPMEM copy may write
            the namespaces until it runs here (the next take())
        :raises: VPMEMCleanupFailed if a namespace cannot be zeroed
        """
        keep = (ZEROED,) if empty else (ZEROED, instance_uuid)
        with self._handover:
            dirty = []
            for vpmem in vpmems:
                owner = self.get(vpmem.name)
                if owner not in keep:
                    LOG.warning('Zeroing vPMEM namespace %(name)s (%(dev)s) '
                                'before its first use by instance %(uuid)s: '
                                'it may hold the data of %(owner)s.',
                                {'name': vpmem.name, 'dev': vpmem.devpath,
                                 'uuid': instance_uuid,
                                 'owner': owner or 'an unknown instance'})
                    dirty.append(vpmem)
            self.zero(dirty)
            if vpmems:
                self.set([v.name for v in vpmems], instance_uuid,
                         incoming=incoming)

    def release_unheld(self, holders, since, vpmems_by_name, tool=None):
        """Zero the namespaces whose recorded owner no longer holds them.

        A namespace recorded as an instance's that is not in ``holders``
        (deleted, moved away, the destination of a failed or crashed move)
        holds data nobody may see again: it is zeroed now rather than
        before its next use, so that it does not stay at rest on this host.

        :param holders: the UUIDs of the instances that may hold namespaces
            of this host: those on this host and those of the moves from or
            to this host in progress
        :param since: ``generation`` before ``holders`` was listed; a
            namespace given to an instance after it is left alone
        :param vpmems_by_name: every vPMEM namespace of this host
        :param tool: callable(vpmems, owner) like zero()'s tool, where
            owner is whose data the namespaces hold
        :returns: the names of the namespaces zeroed
        """
        released = []
        for name, vpmem in sorted(vpmems_by_name.items()):
            with self._handover:
                owner = self.get(name)
                if (owner in (None, ZEROED) or owner in holders or
                        self._changed.get(name, 0) > since):
                    continue
                LOG.info('Zeroing vPMEM namespace %(name)s (%(dev)s): '
                         'instance %(owner)s no longer holds it on this '
                         'host.',
                         {'name': name, 'dev': vpmem.devpath, 'owner': owner})
                try:
                    self.zero([vpmem], tool=tool and functools.partial(
                        tool, owner=owner))
                except exception.VPMEMCleanupFailed as e:
                    LOG.error('Could not zero vPMEM namespace %(name)s, '
                              'trying again at the next periodic update: '
                              '%(error)s', {'name': name, 'error': e})
                    continue
            released.append(name)
        return released

    def _write(self, owners, incoming):
        os.makedirs(self._directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._directory,
                                   prefix='.vpmem-owners-')
        try:
            with os.fdopen(fd, 'w') as f:
                jsonutils.dump({'owners': owners, 'incoming': incoming}, f,
                               indent=1, sort_keys=True)
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
