#    Licensed under the Apache License, Version 2.0 (the "License"); you may
#    not use this file except in compliance with the License. You may obtain
#    a copy of the License at
#
#         http://www.apache.org/licenses/LICENSE-2.0
#
#    Unless required by applicable law or agreed to in writing, software
#    distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
#    WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
#    License for the specific language governing permissions and limitations
#    under the License.

"""A rolling upgrade on the real cloud: an unpatched compute joins.

hostC runs UNPATCHED Nova 34.0.0 (its own venv, built from the pinned sdist)
in its own namespaces like the other hosts. It starts before the patched
computes (``tools/cloud`` with ``old_compute``): Nova refuses to register a
service older than the rest of the deployment (``ServiceTooOld``), so an
old compute is one that was there before the others were upgraded.

While it is up, a request to copy the vPMEM data is refused by the API
(``PMEMCopyOldCompute``: the destination is not known before scheduling,
so every nova-compute must be new enough), whichever host it would go to;
moves without the flag work to and from it. Once it is stopped and its
service record deleted, the copy works again.
"""

from e2e.stack import base
from e2e.stack import computes
from e2e.stack import control
from e2e.stack import scenario
from e2e.stack.scenario import Step

OLD = computes.OLD_HOST


def service_versions():
    """{host: service version} of the nova-compute records in cell1."""
    out = base.run('mariadb', '--defaults-file=%s' % control.MYSQL_CNF,
                   '-u', 'root', '-N', '-e',
                   'SELECT host, version FROM nova_cell1.services WHERE '
                   "`binary` = 'nova-compute' AND deleted = 0").stdout
    return dict(line.split() for line in out.splitlines())


def migrations_of(server):
    return server.action('server', 'migration', 'list', '--server',
                         server.id, '-f', 'value', '-c', 'Id').stdout.split()


class RollingUpgrade(object):
    """The steps of the rolling upgrade, in order; each returns a Step."""

    def __init__(self):
        self.server = scenario.Server('vpmem-upgrade')      # on new hosts
        self.first = None

    def old_compute_present(self):
        """hostC, unpatched, registered before the others were upgraded."""
        versions = service_versions()
        up = scenario.compute_hosts()
        ok = (OLD.name in up and int(versions[OLD.name]) < 75 and
              all(int(versions[h.name]) >= 75 for h in computes.HOSTS))
        return Step('unpatched nova 34.0.0 compute in the cloud', ok,
                    'service versions %s' % versions, None)

    def copy_refused(self):
        self.server.boot('pmem.small', 'hostA')
        self.first = self.server.wait_guest_line()
        result = self.server.action('server', 'migrate',
                                    '--copy-pmem-devices', self.server.id,
                                    check=False)
        ok = ('BadRequestException: 400' in result.stderr and
              'service version 75' in result.stderr and
              not migrations_of(self.server))
        return Step('migrate --copy while hostC is old: 400', ok,
                    ' '.join(result.stderr.split())[-200:], self.first)

    def copy_to_old_host_never_starts(self):
        result = self.server.action('server', 'migrate',
                                    '--copy-pmem-devices', '--host',
                                    OLD.name, self.server.id, check=False)
        ok = ('BadRequestException: 400' in result.stderr and
              not migrations_of(self.server))
        return Step('migrate --copy --host hostC: 400 in the API, no '
                    'migration record', ok,
                    ' '.join(result.stderr.split())[-120:], None)

    def moves_without_copy(self):
        guest = scenario.Server('vpmem-on-old')
        guest.boot('pmem.small', OLD.name)
        born = guest.wait_guest_line()
        hosts = [guest.host]
        for target in ('hostA', OLD.name):
            guest.action('server', 'migrate', '--host', target, guest.id)
            guest.wait_status('VERIFY_RESIZE')
            guest.wait_guest_line()
            guest.action('server', 'resize', 'confirm', guest.id)
            guest.wait_status('ACTIVE')
            hosts.append(guest.host)
        base.openstack('server', 'delete', '--wait', guest.id, cloud='demo')
        ok = born['pattern'] == 'ok' and hosts == [OLD.name, 'hostA',
                                                   OLD.name]
        return Step('boot on hostC; migrate without the flag to hostA '
                    'and back', ok, ' -> '.join(hosts), born)

    def old_compute_retired(self):
        base.stop(OLD.service('nova-compute'))
        service_id = base.openstack(
            'compute', 'service', 'list', '--host', OLD.name, '--service',
            'nova-compute', '-f', 'value', '-c', 'ID').stdout.strip()
        base.openstack('compute', 'service', 'delete', service_id)
        self.server.action('server', 'migrate', '--copy-pmem-devices',
                           self.server.id)
        self.server.wait_status('VERIFY_RESIZE')
        line = self.server.wait_guest_line()
        self.server.action('server', 'resize', 'confirm', self.server.id)
        self.server.wait_status('ACTIVE')
        where = self.server.host
        base.openstack('server', 'delete', '--wait', self.server.id,
                       cloud='demo')
        ok = scenario.same_data(line, self.first) and where == 'hostB' and (
            OLD.name not in service_versions())
        return Step('hostC stopped and deleted: migrate --copy works', ok,
                    'moved to %s; services %s' % (where, service_versions()),
                    line)

    def steps(self):
        return (self.old_compute_present, self.copy_refused,
                self.copy_to_old_host_never_starts, self.moves_without_copy,
                self.old_compute_retired)
