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

"""The steps of the vPMEM copy scenario, shared by the demo and the tests.

Every user-visible action goes through the real ``openstack`` CLI over
HTTP; waiting and inspection use Nova's functional-test helpers and read the
namespace files of the host that holds them.
"""

import time

from e2e import cli as cli_mod
from e2e import cloud as cloud_mod
from e2e import namespaces as ns_mod

COPY_FLAG = '--copy-pmem-devices'
DONE_MIGRATION = ('finished', 'confirmed', 'reverted', 'error', 'failed')


class FeatureStatus(object):
    def __init__(self, reasons):
        self.reasons = reasons

    @property
    def available(self):
        return not self.reasons

    def __str__(self):
        if self.available:
            return 'available'
        return 'not available in this tree: ' + '; '.join(self.reasons)


def copy_feature(env, max_api_version=None):
    """FeatureStatus of the copy feature in the Nova tree under test.

    ``max_api_version`` is what the running API advertises; without it the
    tree's own constant is read (so tests can skip before building the
    environment).
    """
    if max_api_version is None:
        from nova.api.openstack import api_version_request
        max_api_version = api_version_request._MAX_API_VERSION
    reasons = []
    wanted = tuple(map(int, cloud_mod.COPY_MICROVERSION.split('.')))
    if tuple(map(int, max_api_version.split('.'))) < wanted:
        reasons.append('compute API max microversion is %s (< %s)' % (
            max_api_version, cloud_mod.COPY_MICROVERSION))
    for command in ('server migrate', 'server resize'):
        if not cli_mod.help_mentions(command, COPY_FLAG):
            reasons.append('`openstack %s` has no %s' % (command, COPY_FLAG))
    if not env.copy_helper_installed:
        reasons.append('copy helper %s is not installed' % env.helper_path)
    return FeatureStatus(reasons)


class Result(object):
    """One row of the summary table."""

    def __init__(self, operation):
        self.operation = operation
        self.bytes = 0
        self.seconds = None
        self.digests = ''
        self.result = 'FAIL'
        self.checks = []

    @property
    def ok(self):
        return self.result in ('PASS', 'SKIP')

    def check(self, what, condition, detail=''):
        self.checks.append((what, bool(condition), detail))
        return bool(condition)

    def finish(self):
        self.result = ('PASS' if all(ok for _, ok, _ in self.checks)
                       else 'FAIL')
        return self

    def skip(self, reason):
        self.result = 'SKIP'
        self.digests = reason
        return self

    @property
    def rate(self):
        if not self.bytes or not self.seconds:
            return ''
        return '%.1f' % (self.bytes / self.seconds / 1e6)


class Scenario(object):

    def __init__(self, env, cloud, say=print):
        self.env = env
        self.cloud = cloud
        self.say = say
        self.cli = cli_mod.OpenStackCLI(
            cloud.http_url, cloud.api.project_id, echo=say,
            identity_url=cloud.identity_url)
        self.quiet_cli = cli_mod.OpenStackCLI(
            cloud.http_url, cloud.api.project_id,
            identity_url=cloud.identity_url)
        self._feature = None

    # -- the feature ------------------------------------------------------

    def feature(self):
        """Is cold migrate/resize with --copy-pmem-devices in this tree?"""
        if self._feature is None:
            self._feature = copy_feature(self.env,
                                         self.cloud.max_api_version())
        return self._feature

    # -- setup ------------------------------------------------------------

    def create_flavors(self):
        for name, label, ram, vcpus in (('pmem.small', 'SMALL', 512, 1),
                                        ('pmem.bigger', 'LARGE', 1024, 2)):
            self.cli.run('flavor', 'create', '--ram', str(ram), '--vcpus',
                         str(vcpus), '--disk', '1', '--property',
                         'hw:pmem=%s' % label, name)

    def flavor_id(self, name):
        return self.quiet_cli.run('flavor', 'show', name,
                                  json_output=True)['id']

    def boot(self, host, flavor='pmem.small'):
        """Boot a server with vPMEM on ``host``; return its id."""
        self.say('boot a server with flavor %s on %s' % (flavor, host.name))
        server = self.cloud._create_server(
            name='pmem-guest', image_uuid=cloud_mod.IMAGE,
            flavor_id=self.flavor_id(flavor), networks='none',
            az='nova:%s' % host.name, expected_state='ACTIVE')
        return server['id']

    def write_pattern(self, server_id, seed=1):
        """Write a known pattern into the server's namespaces.

        Returns (host, [(Namespace, sha256)]).
        """
        host, namespaces = self.cloud.namespaces_of(server_id)
        written = []
        for index, ns in enumerate(namespaces):
            digest = ns_mod.write_pattern(ns.backing, ns.size,
                                          seed * 100 + index)
            self.say('wrote %d MiB pattern (random data, every 4th 2 MiB '
                     'block zero) into %s:%s, sha256 %s' % (
                         ns.size >> 20, host.name, ns.devpath, digest[:16]))
            written.append((ns, digest))
        return host, written

    # -- moves ------------------------------------------------------------

    def migrate(self, server_id, copy):
        args = ['server', 'migrate'] + ([COPY_FLAG] if copy else [])
        return self._move(server_id, args + [server_id], copy)

    def resize(self, server_id, flavor, copy):
        args = (['server', 'resize', '--flavor', flavor] +
                ([COPY_FLAG] if copy else []))
        return self._move(server_id, args + [server_id], copy)

    def _move(self, server_id, args, copy):
        """Run the move with the CLI; return (migration, seconds)."""
        microversion = cloud_mod.COPY_MICROVERSION if copy else None
        before = {m['id'] for m in self.migrations(server_id)}
        start = time.monotonic()
        self.cli.run(*args, microversion=microversion)
        migration = self.wait_migration(server_id, before)
        seconds = time.monotonic() - start
        self.wait_task_done(server_id)
        return migration, seconds

    def confirm(self, server_id):
        self.cli.run('server', 'resize', 'confirm', server_id)
        self.cloud._wait_for_state_change({'id': server_id}, 'ACTIVE')
        self.wait_migration_status(server_id, ('confirmed',))

    def revert(self, server_id):
        self.cli.run('server', 'resize', 'revert', server_id)
        self.cloud._wait_for_state_change({'id': server_id}, 'ACTIVE')
        self.wait_migration_status(server_id, ('reverted',))

    def stop(self, server_id):
        self.cli.run('server', 'stop', server_id)
        self.cloud._wait_for_state_change({'id': server_id}, 'SHUTOFF')

    def start(self, server_id):
        self.cli.run('server', 'start', server_id)
        self.cloud._wait_for_state_change({'id': server_id}, 'ACTIVE')

    # -- waiting and looking ------------------------------------------------

    def migrations(self, server_id):
        return self.cloud.admin_api.api_get(
            '/os-migrations?instance_uuid=%s' % server_id).body['migrations']

    def wait_migration(self, server_id, before, timeout=300):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            new = [m for m in self.migrations(server_id)
                   if m['id'] not in before]
            if new and new[0]['status'] in DONE_MIGRATION:
                return new[0]
            time.sleep(0.2)
        raise TimeoutError('migration of %s did not finish' % server_id)

    def wait_migration_status(self, server_id, statuses, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            latest = max(self.migrations(server_id), key=lambda m: m['id'])
            if latest['status'] in statuses:
                return latest
            time.sleep(0.2)
        raise TimeoutError('migration of %s never reached %s' % (
            server_id, statuses))

    def wait_task_done(self, server_id, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            server = self.cloud.admin_api.get_server(server_id)
            if server['OS-EXT-STS:task_state'] is None:
                return server
            time.sleep(0.2)
        raise TimeoutError('server %s is still busy' % server_id)

    def show(self, server_id):
        """`openstack server show`: status, host; also returns them."""
        data = self.cli.run('server', 'show', server_id, '-c', 'status',
                            '-c', 'OS-EXT-SRV-ATTR:host', '-c', 'fault',
                            json_output=True)
        self.say('  status %s on %s%s' % (
            data.get('status'), data.get('OS-EXT-SRV-ATTR:host'),
            ('  fault: %s' % data['fault']['message'])
            if data.get('fault') else ''))
        return data

    def fault_message(self, server_id):
        server = self.cloud.admin_api.get_server(server_id)
        fault = server.get('fault') or {}
        if fault:
            return fault.get('message', '')
        actions = self.cloud.admin_api.api_get(
            '/servers/%s/os-instance-actions' % server_id).body
        latest = actions['instanceActions'][0]
        events = self.cloud.admin_api.api_get(
            '/servers/%s/os-instance-actions/%s' % (
                server_id, latest['request_id'])).body
        for event in events['instanceAction'].get('events', []):
            if event.get('result') == 'Error':
                # 'details' (microversion 2.84) holds the error message; the
                # traceback's last line is only the re-raise.
                return '%s: %s' % (event['event'], event.get('details') or
                                   event.get('traceback', '').strip())
        return ''

    def describe(self, host, ns):
        state = ('zero' if ns_mod.is_zero(ns.backing, ns.size) else
                 'sha256 %s' % ns_mod.digest(ns.backing, ns.size)[:16])
        self.say('  %s:%s (%d MiB) -> %s' % (host.name, ns.devpath,
                                             ns.size >> 20, state))
        return state
