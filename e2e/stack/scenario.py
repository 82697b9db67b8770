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

"""The real cloud's proof: what the guest itself sees after each move.

Every action goes through the real ``openstack`` CLI with real Keystone
tokens: the tenant ``demo`` owns the server, ``admin`` moves it, and the
CLI shows where it went. The waits in between poll Nova's API directly
(``nova.ComputeApi``): after each step the scenario waits for the guest's
own console line (the server's console output) from a boot it has not seen
yet, and compares it with the line of the first boot. It also looks at the
namespaces' files (on the host that should have zeroed them), but the
guest's line is the proof.

``run()`` yields one ``Step`` per row of the demo's table; the test group
(``test_cloud``) and ``tools/demo`` run the same steps.
"""

import collections
import json
import time

from e2e.stack import base
from e2e.stack import computes
from e2e.stack import guest_image
from e2e.stack import nova

COPY_VERSION = '2.105'
API = nova.ComputeApi(COPY_VERSION)
Step = collections.namedtuple('Step', 'name ok detail line')


class ScenarioError(Exception):
    pass


class Progress(object):
    """Prints a progress line about every ``every`` seconds of a wait."""

    def __init__(self, every=15):
        self.started = time.monotonic()
        self.every = every
        self.next = self.started + every

    def __call__(self, what):
        now = time.monotonic()
        if now >= self.next:
            base.say('%s (%.0f s)' % (what, now - self.started))
            self.next = now + self.every


def compute_hosts():
    """The hosts of the nova-compute services Nova knows."""
    return base.openstack('compute', 'service', 'list', '--service',
                          'nova-compute', '-f', 'value', '-c', 'Host'
                          ).stdout.split()


class Server(object):
    """One server of the tenant, seen through the CLI."""

    def __init__(self, name):
        self.name = name
        self.id = None
        self.seen_boots = set()

    def boot(self, flavor, host):
        """Boot as the tenant on host.

        Only an admin may name a host, so the other computes are disabled
        meanwhile.
        """
        others = [name for name in compute_hosts() if name != host]
        for other in others:
            base.openstack('compute', 'service', 'set', '--disable',
                           other, 'nova-compute')
        try:
            self.id = base.openstack(
                'server', 'create', '--flavor', flavor, '--image',
                'vpmem-guest', '--nic', 'none', '-f', 'value', '-c', 'id',
                self.name, cloud='demo').stdout.strip()
            self.wait_status('ACTIVE')      # an ERROR says its fault
        finally:
            for other in others:
                base.openstack('compute', 'service', 'set', '--enable',
                               other, 'nova-compute')

    def show(self):
        return json.loads(base.openstack('server', 'show', '-f', 'json',
                                         self.id).stdout)

    @property
    def host(self):
        return self.show()['OS-EXT-SRV-ATTR:host']

    def wait_status(self, wanted, timeout=600):
        progress = Progress()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = API.call('GET', '/servers/%s' % self.id)['server']
            if info['status'] == wanted:
                return info
            progress('%s is %s, waiting for %s' % (
                self.name, info['status'], wanted))
            if info['status'] == 'ERROR':
                raise ScenarioError('%s went to ERROR: %s' % (
                    self.name, info.get('fault')))
            if wanted == 'VERIFY_RESIZE' and info['status'] == 'ACTIVE':
                self._fail_on_failed_move()
            time.sleep(2)
        raise ScenarioError('%s not %s after %ds (still %s)' % (
            self.name, wanted, timeout, info['status']))

    def migrations(self):
        """Its migrations from Nova's API, the newest first."""
        return API.call('GET', '/os-migrations?instance_uuid=%s' %
                        self.id)['migrations']

    def _fail_on_failed_move(self):
        """A move refused by the compute rolls back to ACTIVE: say so."""
        migrations = self.migrations()
        if migrations and migrations[0]['status'] == 'error':
            raise ScenarioError('the move of %s failed (migration %s); see '
                                'the nova-compute logs in %s' % (
                                    self.name, migrations[0]['id'],
                                    base.LOGS))

    def console(self):
        return base.openstack('console', 'log', 'show', self.id,
                              check=False).stdout

    def wait_guest_line(self, timeout=300):
        """The guest's line from a boot this scenario has not seen yet."""
        progress = Progress()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            output = API.call('POST', '/servers/%s/action' % self.id,
                              {'os-getConsoleOutput': {}})['output']
            line = guest_image.parse_line(output)
            if line and line['boot'] not in self.seen_boots:
                self.seen_boots.add(line['boot'])
                return line
            progress('waiting for the guest of %s to print its line' %
                     self.name)
            time.sleep(3)
        raise ScenarioError('no new guest line from %s within %ds' % (
            self.name, timeout))

    def action(self, *argv, cloud='admin', check=True):
        return base.openstack('--os-compute-api-version', COPY_VERSION,
                              *argv, cloud=cloud, check=check)


def is_zero(host_name):
    """{devpath: True when the namespace reads back all zero} of a host."""
    host = {h.name: h for h in computes.ALL_HOSTS}[host_name]
    zero = bytes(1 << 20)
    result = {}
    for ns in host.namespaces:
        with open(ns.backing, 'rb') as f:
            result[ns.devpath] = all(
                block == zero[:len(block)]
                for block in iter(lambda: f.read(1 << 20), b''))
    return result


def same_data(line, first):
    """The guest sees the namespace and the data of its first boot."""
    return (line['mode'] == 'devdax' and line['pattern'] == 'ok' and
            line['uuid'] == first['uuid'] and
            line['sha256'] == first['sha256'] and
            line['first_boot'] == 'no')


class Tour(object):
    """The steps of the proof, in order; each returns a Step."""

    def __init__(self, name='vpmem-tour'):
        self.server = Server(name)
        self.first = None

    def _moved(self, name, line, host, extra_ok=True, extra=''):
        where = self.server.host
        ok = same_data(line, self.first) and where == host and extra_ok
        return Step(name, ok, 'on %s (want %s)%s' % (where, host, extra),
                    line)

    def _resize(self, flavor, copy=True, cloud='demo'):
        flags = ['--copy-pmem-devices'] if copy else []
        self.server.action('server', 'resize', '--flavor', flavor, *flags,
                           self.server.id, cloud=cloud)
        self.server.wait_status('VERIFY_RESIZE')
        return self.server.wait_guest_line()

    def _confirm(self):
        self.server.action('server', 'resize', 'confirm', self.server.id)
        self.server.wait_status('ACTIVE')

    def boot(self):
        self.server.boot('pmem.small', 'hostA')
        line = self.server.wait_guest_line()
        self.first = line
        ok = (line['first_boot'] == 'yes' and line['mode'] == 'devdax' and
              line['pattern'] == 'ok' and self.server.host == 'hostA')
        return Step('boot on hostA; the guest writes its namespace', ok,
                    'on %s' % self.server.host, line)

    def tenant_cannot_migrate(self):
        result = self.server.action('server', 'migrate',
                                    '--copy-pmem-devices', self.server.id,
                                    cloud='demo', check=False)
        ok = (result.returncode != 0 and
              'ForbiddenException: 403' in result.stderr)
        return Step('tenant: migrate --copy-pmem-devices is 403', ok,
                    ' '.join(result.stderr.split())[-160:], None)

    def migrate_with_copy(self):
        self.server.action('server', 'migrate', '--copy-pmem-devices',
                           self.server.id)
        self.server.wait_status('VERIFY_RESIZE')
        line = self.server.wait_guest_line()
        self._confirm()
        zeroed = all(is_zero('hostA').values())
        return self._moved('migrate --copy-pmem-devices + confirm', line,
                           'hostB', zeroed,
                           '; hostA namespaces zero: %s' % zeroed)

    def resize_to_larger(self):
        line = self._resize('pmem.large')
        self._confirm()
        larger = int(line['region']) > int(self.first['region'])
        zeroed = all(is_zero('hostB').values())
        return self._moved('tenant: resize onto LARGE --copy + confirm',
                           line, 'hostA', larger and zeroed,
                           '; region %s > %s; hostB zero: %s' % (
                               line['region'], self.first['region'],
                               zeroed))

    def stop_start(self):
        self.server.action('server', 'stop', self.server.id, cloud='demo')
        self.server.wait_status('SHUTOFF')
        self.server.action('server', 'start', self.server.id, cloud='demo')
        self.server.wait_status('ACTIVE')
        line = self.server.wait_guest_line()
        return self._moved('stop and start', line, 'hostA')

    def hard_reboot(self):
        self.server.action('server', 'reboot', '--hard', self.server.id,
                           cloud='demo')
        self.server.wait_status('ACTIVE')
        line = self.server.wait_guest_line()
        return self._moved('hard reboot', line, 'hostA')

    def resize_and_revert(self):
        on_b = self._resize('pmem.large.2cpu')
        self.server.action('server', 'resize', 'revert', self.server.id,
                           cloud='demo')
        self.server.wait_status('ACTIVE')
        line = self.server.wait_guest_line()
        zeroed = all(is_zero('hostB').values())
        ok = same_data(on_b, self.first) and zeroed
        return self._moved('resize --copy to hostB, then revert', line,
                           'hostA', ok, '; on hostB it saw its data: %s; '
                           'hostB zero after revert: %s' % (
                               same_data(on_b, self.first), zeroed))

    def migrate_without_copy(self):
        self.server.action('server', 'migrate', self.server.id)
        self.server.wait_status('VERIFY_RESIZE')
        line = self.server.wait_guest_line()
        self._confirm()
        gone = line['first_boot'] == 'no' and line['pattern'] != 'ok'
        return Step('contrast: migrate WITHOUT the flag: data gone', gone,
                    'on %s; the guest finds mode=%s pattern=%s' % (
                        self.server.host, line['mode'], line['pattern']),
                    line)

    def delete(self):
        base.openstack('server', 'delete', '--wait', self.server.id,
                       cloud='demo')
        zero = {h.name: all(is_zero(h.name).values())
                for h in computes.HOSTS}
        return Step('delete: every namespace zero', all(zero.values()),
                    ', '.join('%s %s' % item for item in zero.items()), None)

    def steps(self):
        return (self.boot, self.tenant_cannot_migrate,
                self.migrate_with_copy, self.resize_to_larger,
                self.stop_start, self.hard_reboot, self.resize_and_revert,
                self.migrate_without_copy, self.delete)


def format_line(line):
    """The guest's line, short enough for a table cell."""
    if not line:
        return '-'
    return 'ns %s %s %s MiB sha256 %s pattern=%s' % (
        line['uuid'][:8], line['mode'], int(line['size']) >> 20,
        line['sha256'][:12], line['pattern'])
