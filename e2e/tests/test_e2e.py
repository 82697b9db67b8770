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

"""End-to-end tests of cold migrate/resize with vPMEM on two real hosts.

Each test builds the whole environment (network namespaces with real sshd,
per-host namespace stand-ins, patched Nova's services in this process with
the API on real HTTP), boots a server with vPMEM on host A, writes a known
pattern into its namespace and drives Nova with the real ``openstack`` CLI.

Faults are real: a helper process killed mid-stream (SIGBUS, as a poisoned
PMEM line does), ssh connections killed, the destination's link taken down,
its backing storage filled, its pinned host key changed, a copy held past
the copy timeout. Only ``finish_migration``'s guest creation is made to fail
by patching the destination driver, because fakelibvirt has no real
hypervisor to break.

Tests that need the copy feature (API microversion 2.105, the CLI flag and
the copy helper) are skipped with the reason when it is absent.

Run (as root, from the repo root):  tools/run-e2e-tests
"""

import concurrent.futures
import os
import subprocess
import sys
import threading
import time
import unittest
import warnings

warnings.filterwarnings('ignore')
os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', 'False')

import psutil  # noqa: E402

from nova import context as nova_context  # noqa: E402 (monkey patches)
from nova import exception  # noqa: E402

from e2e import cloud as cloud_mod  # noqa: E402
from e2e import environment  # noqa: E402
from e2e import namespaces as ns_mod  # noqa: E402
from e2e import scenario as scenario_mod  # noqa: E402

NAMESPACE_MIB = 8
MIB = 1024 * 1024


def log(text=''):
    pass


_FEATURE = []


def copy_feature(env):
    if not _FEATURE:
        _FEATURE.append(scenario_mod.copy_feature(env))
    return _FEATURE[0]


class E2ETestCase(unittest.TestCase):
    """One fresh environment per test, with a server on host A."""

    copy_timeout = 0
    copy_options = {}
    needs_copy = False
    running_guests = False

    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.skipTest('needs root (network namespaces, sshd, mounts)')
        self.env = environment.Environment(namespace_mib=NAMESPACE_MIB,
                                           copy_timeout=self.copy_timeout,
                                           copy_options=self.copy_options)
        if self.needs_copy:
            # Checked before building anything; checked again against the
            # running API below.
            feature = copy_feature(self.env)
            if not feature.available:
                self.skipTest('copy feature %s' % feature)
        self.env.setup()
        self.addCleanup(self.env.teardown)
        self.cloud = cloud_mod.NovaCloud()
        self.cloud.env = self.env
        self.cloud.running_guests = self.running_guests
        # Registered first: undoes the fixtures even if setUp fails half way.
        self.addCleanup(self.cloud.doCleanups)
        self.cloud.setUp()
        self.sc = scenario_mod.Scenario(self.env, self.cloud, say=log)
        self.sc.create_flavors()
        self.server = self.sc.boot(self.env.a)
        host, written = self.sc.write_pattern(self.server)
        self.assertIs(self.env.a, host)
        self.src_ns, self.src_digest = written[0]

    def require_copy(self):
        feature = self.sc.feature()
        if not feature.available:
            self.skipTest('copy feature %s' % feature)

    # -- assertions ---------------------------------------------------------

    def assert_source_intact(self):
        self.assertEqual(self.src_digest,
                         ns_mod.digest(self.src_ns.backing, self.src_ns.size),
                         'source namespace changed')

    def assert_host_zeroed(self, host):
        for ns in host.namespaces.namespaces:
            self.assertTrue(ns_mod.is_zero(ns.backing, ns.size),
                            '%s:%s is not zero' % (host.name, ns.devpath))

    def assert_rolled_back(self, migration, copy_failed=True):
        """The documented outcome of a failed copy: no byte lost.

        With copy_failed, the fault must name the source namespace that
        failed (faults caught before the copy name the ssh step instead).
        """
        self.assertIn(migration['status'], ('error', 'failed'))
        server = self.sc.wait_task_done(self.server)
        self.assertEqual('ACTIVE', server['status'])
        self.assertEqual('hostA', server['OS-EXT-SRV-ATTR:host'])
        self.assert_source_intact()
        self.assert_host_zeroed(self.env.b)
        fault = self.sc.fault_message(self.server)
        self.assertTrue(fault, 'no fault message recorded')
        if copy_failed:
            self.assertIn('Failed to copy the vPMEM namespace %s to ' %
                          self.src_ns.devpath, fault)
        return server


class TestEnvironment(E2ETestCase):
    """The environment itself, independent of the copy feature."""

    def test_hosts_are_reachable_with_pinned_keys_only(self):
        for host in self.env.hosts:
            result = self.env.pair.check_ssh(host)
            self.assertEqual(0, result.returncode, result.stderr)
        dropin = open('/etc/ssh/ssh_config.d/nova-e2e.conf').read()
        self.assertIn('StrictHostKeyChecking yes', dropin)
        self.assertIn('BatchMode yes', dropin)
        self.assertNotIn('StrictHostKeyChecking no', dropin)
        # A wrong pinned key is refused.
        other = self.env.a.public_host_key()
        self.env.pair.write_known_hosts({'hostB': other})
        result = self.env.pair.check_ssh(self.env.b)
        self.assertNotEqual(0, result.returncode)
        self.assertIn('Host key verification failed', result.stderr)

    def test_each_compute_sees_its_own_namespaces_and_address(self):
        for host in self.env.hosts:
            driver = self.cloud.computes[host.name].driver
            self.assertEqual(host.address, driver.get_host_ip_addr())
            self.assertEqual(
                {ns.name: ns.devpath for ns in host.namespaces.namespaces},
                {name: vpmem.devpath
                 for name, vpmem in driver._vpmems_by_name.items()})
        self.assertNotEqual(self.env.a.namespaces.namespaces[0].devpath,
                            self.env.b.namespaces.namespaces[0].devpath)


class TestWithoutCopy(E2ETestCase):
    """Today's behaviour: moves without --copy-pmem-devices."""

    def test_migrate_leaves_destination_empty_confirm_zeroes_source(self):
        migration, _ = self.sc.migrate(self.server, copy=False)
        self.assertEqual('finished', migration['status'])
        source, old, dest, new = self.cloud.migration_namespaces(
            self.server, migration)
        self.assertEqual(('hostA', 'hostB'), (source.name, dest.name))
        self.assertTrue(ns_mod.is_zero(new[0].backing, new[0].size))
        self.assert_source_intact()        # until confirm
        self.sc.confirm(self.server)
        self.assertEqual('hostB', self.cloud.host_of(self.server))
        self.assertTrue(ns_mod.is_zero(old[0].backing, old[0].size),
                        'confirm did not zero the source namespace')
        self.assertIn(('hostA', old[0].devpath), self.cloud.zeroed)

    def test_revert_keeps_source_and_zeroes_destination(self):
        migration, _ = self.sc.resize(self.server, 'pmem.bigger', copy=False)
        self.assertEqual('finished', migration['status'])
        _, _, dest, new = self.cloud.migration_namespaces(self.server,
                                                          migration)
        # The guest wrote to its new namespace before the revert.
        ns_mod.dirty(new[0].backing, new[0].size, seed=7)
        self.sc.revert(self.server)
        self.assertEqual('hostA', self.cloud.host_of(self.server))
        self.assert_source_intact()
        self.assertTrue(ns_mod.is_zero(new[0].backing, new[0].size),
                        'revert did not zero the destination namespace')

    def test_destination_unreachable(self):
        self.env.b.link(up=False)
        migration, _ = self.sc.migrate(self.server, copy=False)
        self.env.b.link(up=True)
        self.assert_rolled_back(migration, copy_failed=False)

    def test_destination_host_key_mismatch(self):
        self.env.pair.write_known_hosts(
            {'hostB': self.env.a.public_host_key()})
        migration, _ = self.sc.migrate(self.server, copy=False)
        self.assert_rolled_back(migration, copy_failed=False)


class TestCopy(E2ETestCase):
    """--copy-pmem-devices: the demo steps as assertions."""

    needs_copy = True

    def setUp(self):
        super().setUp()
        self.require_copy()

    def test_migrate_copy_confirm(self):
        migration, _ = self.sc.migrate(self.server, copy=True)
        self.assertEqual('finished', migration['status'])
        source, old, dest, new = self.cloud.migration_namespaces(
            self.server, migration)
        self.assertEqual('hostB', dest.name)
        self.assertEqual(self.src_digest,
                         ns_mod.digest(new[0].backing, self.src_ns.size))
        self.sc.confirm(self.server)
        self.assertTrue(ns_mod.is_zero(old[0].backing, old[0].size))
        self.assertEqual(self.src_digest,
                         ns_mod.digest(new[0].backing, self.src_ns.size))
        # The data lives as long as the server holds the namespace: a stop
        # and start (a hard reboot of the guest) keeps it.
        self.sc.stop(self.server)
        self.sc.start(self.server)
        self.assertEqual(self.src_digest,
                         ns_mod.digest(new[0].backing, self.src_ns.size))

    def cli_confirm_any_state(self):
        """Confirm; leave the server stopped whatever state it shows.

        fakelibvirt reports no power state, so the server may come back
        ACTIVE from a move of a stopped server.
        """
        self.sc.cli.run('server', 'resize', 'confirm', self.server)
        self.sc.wait_migration_status(self.server, ('confirmed',))
        server = self.sc.wait_task_done(self.server)
        if server['status'] != 'SHUTOFF':
            self.sc.stop(self.server)

    def test_stopped_server_migrated_with_copy_keeps_data_after_start(self):
        self.sc.stop(self.server)
        migration, _ = self.sc.migrate(self.server, copy=True)
        self.assertEqual('finished', migration['status'])
        _, old, _, new = self.cloud.migration_namespaces(
            self.server, migration)
        self.cli_confirm_any_state()
        self.sc.start(self.server)
        self.assertEqual(self.src_digest,
                         ns_mod.digest(new[0].backing, self.src_ns.size))
        self.assertTrue(ns_mod.is_zero(old[0].backing, old[0].size))

    def test_resize_copy_revert(self):
        self.write_labels()
        migration, _ = self.sc.resize(self.server, 'pmem.bigger', copy=True)
        self.assertEqual('finished', migration['status'])
        _, _, dest, new = self.cloud.migration_namespaces(self.server,
                                                          migration)
        self.assert_guest_layout(new[0])
        self.sc.revert(self.server)
        self.assertEqual('hostA', self.cloud.host_of(self.server))
        self.assert_source_intact()
        self.assert_host_zeroed(self.env.b)

    def test_resize_copy_confirm(self):
        self.write_labels()
        migration, _ = self.sc.resize(self.server, 'pmem.bigger', copy=True)
        _, old, _, new = self.cloud.migration_namespaces(self.server,
                                                         migration)
        self.sc.confirm(self.server)
        self.assertEqual('hostB', self.cloud.host_of(self.server))
        self.assert_guest_layout(new[0])
        self.assert_host_zeroed(self.env.a)

    def write_labels(self):
        """Give the source NVDIMM labels: the pattern's last block is zero."""
        self.src_digest = ns_mod.write_labels(self.src_ns.backing,
                                              self.src_ns.size)
        with open(self.src_ns.backing, 'rb') as f:
            self.src_bytes = f.read(self.src_ns.size)

    def assert_guest_layout(self, new):
        """What the guest finds in its larger namespace after a resize."""
        self.assertGreater(new.size, self.src_ns.size)
        layout = ns_mod.guest_layout(self.src_bytes, new.backing, new.size)
        self.assertEqual({check: True for check in layout}, layout,
                         new.devpath)

    def test_resize_onto_dirty_larger_namespace_keeps_guest_layout(self):
        # hostB's LARGE namespace holds stray bytes that its ledger does
        # not know about: the copy must not leave any of them to the guest.
        large = self.env.b.namespaces.namespaces[2]
        ns_mod.dirty(large.backing, large.size, seed=5)
        self.cloud.computes['hostB'].driver._vpmem_owners.set(
            ['ns_2'], 'zeroed')
        self.write_labels()
        migration, _ = self.sc.resize(self.server, 'pmem.bigger', copy=True)
        self.assertEqual('finished', migration['status'])
        _, _, dest, new = self.cloud.migration_namespaces(self.server,
                                                          migration)
        self.assertEqual((self.env.b, large.devpath), (dest, new[0].devpath))
        self.assert_guest_layout(new[0])

    def test_same_host_resize_keeps_guest_layout(self):
        self.cloud.flags(allow_resize_to_same_host=True)
        self.sc.cli.run('compute', 'service', 'set', '--disable', 'hostB',
                        'nova-compute')
        self.write_labels()
        migration, _ = self.sc.resize(self.server, 'pmem.bigger', copy=True)
        self.assertEqual('finished', migration['status'])
        source, old, dest, new = self.cloud.migration_namespaces(
            self.server, migration)
        self.assertEqual((self.env.a, self.env.a), (source, dest))
        self.assert_guest_layout(new[0])
        self.sc.confirm(self.server)
        self.assertTrue(ns_mod.is_zero(old[0].backing, old[0].size))
        self.assert_guest_layout(new[0])

    def test_copy_without_flag_after_copy(self):
        """A later move without the flag does not copy (flag not sticky)."""
        self.sc.migrate(self.server, copy=True)
        self.sc.revert(self.server)
        migration, _ = self.sc.migrate(self.server, copy=False)
        _, _, _, new = self.cloud.migration_namespaces(self.server,
                                                       migration)
        self.assertTrue(ns_mod.is_zero(new[0].backing, new[0].size))


class TestCopyFaults(E2ETestCase):
    """Fault matrix: every failure leaves the server whole on the source."""

    needs_copy = True

    def setUp(self):
        super().setUp()
        self.require_copy()

    def test_source_read_failure(self):
        self.env.arm(self.env.a, 'send', 2 * MIB, 'fail')
        migration, _ = self.sc.migrate(self.server, copy=True)
        self.assert_rolled_back(migration)

    def test_ssh_connection_cut_mid_stream(self):
        self.env.arm(self.env.b, 'receive', 2 * MIB, 'hold')
        self.sc.cli.run('server', 'migrate', '--copy-pmem-devices',
                        self.server,
                        microversion=cloud_mod.COPY_MICROVERSION)
        self.env.wait_reached(self.env.b, 'receive')
        self.env.disarm()
        self.assertGreater(self.env.b.kill_ssh_sessions(), 0)
        migration = self.sc.wait_migration(self.server, set())
        self.assert_rolled_back(migration)

    def test_destination_write_failure(self):
        self.env.b.namespaces.fill_storage()
        try:
            migration, _ = self.sc.migrate(self.server, copy=True)
        finally:
            self.env.b.namespaces.free_storage()
        self.assert_rolled_back(migration)

    def test_destination_write_failure_mid_stream(self):
        self.env.arm(self.env.b, 'receive', 2 * MIB, 'fail')
        migration, _ = self.sc.migrate(self.server, copy=True)
        self.assert_rolled_back(migration)

    def test_destination_that_could_not_be_wiped_is_zeroed_by_its_host(
            self):
        """The copy fails and so does the wipe of what it wrote on B.

        The copied bytes stay on hostB until its next periodic resource
        update, which zeroes the namespace: nobody holds it any more.
        """
        self.env.arm(self.env.b, 'receive', 4 * MIB, 'fail')
        self.env.arm(self.env.b, 'zero', 0, 'fail')
        migration, _ = self.sc.migrate(self.server, copy=True)
        self.env.disarm()
        self.assertIn(migration['status'], ('error', 'failed'))
        server = self.sc.wait_task_done(self.server)
        self.assertEqual(('ACTIVE', 'hostA'),
                         (server['status'], server['OS-EXT-SRV-ATTR:host']))
        self.assert_source_intact()
        dirty = [ns for ns in self.env.b.namespaces.namespaces
                 if not ns_mod.is_zero(ns.backing, ns.size)]
        self.assertEqual(1, len(dirty), 'the fault left nothing on hostB')
        # The periodic resource update releases the failed move's claim on
        # hostB and zeroes what the move left; then its two SMALL
        # namespaces go to two new servers.
        self.cloud.computes['hostB'].manager.update_available_resource(
            nova_context.get_admin_context())
        self.assertTrue(ns_mod.is_zero(dirty[0].backing, dirty[0].size))
        self.assertEqual([('hostB', dirty[0].devpath)], self.cloud.zeroed[-1:])
        for _ in range(2):
            other = self.sc.boot(self.env.b)
            host, namespaces = self.cloud.namespaces_of(other)
            self.assertIs(self.env.b, host)
            self.assertTrue(ns_mod.is_zero(namespaces[0].backing,
                                           namespaces[0].size),
                            'a new server got %s with data in it' %
                            namespaces[0].devpath)
        self.assertIn(('hostB', dirty[0].devpath), self.cloud.zeroed)

    def test_destination_unreachable(self):
        self.env.b.link(up=False)
        try:
            migration, _ = self.sc.migrate(self.server, copy=True)
        finally:
            self.env.b.link(up=True)
        self.assert_rolled_back(migration, copy_failed=False)

    def test_destination_host_key_mismatch(self):
        self.env.pair.write_known_hosts(
            {'hostB': self.env.a.public_host_key()})
        migration, _ = self.sc.migrate(self.server, copy=True)
        self.env.pair.write_known_hosts()
        self.assert_rolled_back(migration, copy_failed=False)

    def test_changed_host_key_refused_whatever_ssh_config_says(self):
        # The ssh client configuration turns host key checking off, as
        # upstream's migration ssh guide tells operators to do, and hostB's
        # key changed: plain ssh still connects, the copy must not.
        self.env.pair.write_ssh_dropin(strict=False)
        self.env.pair.write_known_hosts(
            {'hostB': self.env.a.public_host_key()})
        plain = self.env.pair.check_ssh(self.env.b)
        self.assertEqual(0, plain.returncode, plain.stderr)
        self.assertIn('HOST IDENTIFICATION HAS CHANGED', plain.stderr)
        migration, _ = self.sc.migrate(self.server, copy=True)
        self.assert_rolled_back(migration, copy_failed=False)
        self.assertIn('Host key verification failed',
                      self.sc.fault_message(self.server))

    def test_finish_resize_failure_on_destination(self):
        """Guest creation fails on B after the copy landed there.

        Documented outcome (no mechanism moves the server back): the server
        is in ERROR on the destination, the migration in error, and it
        still holds the destination namespaces with its copied data (its
        own, zeroed when it is deleted); the source data is still intact.
        """
        dest_driver = self.cloud.computes['hostB'].driver

        def fail(*args, **kwargs):
            raise exception.NovaException(
                'e2e: guest creation failed on hostB')
        dest_driver._create_guest_with_network = fail
        migration, _ = self.sc.migrate(self.server, copy=True)
        self.assertIn(migration['status'], ('error', 'failed'))
        server = self.sc.wait_task_done(self.server)
        self.assertEqual('ERROR', server['status'])
        self.assert_source_intact()
        _, namespaces = self.cloud.namespaces_of(self.server)
        self.assertEqual(self.src_digest,
                         ns_mod.digest(namespaces[0].backing,
                                       self.src_ns.size))


class SendWatcher(object):
    """Watches the helper's ``send`` processes on this machine over time.

    ``most`` is the most that ran at once; ``first_seen`` maps the options
    of a pre-copy (``--live``, ``--with-record``) to when a send with it was
    first seen, and ``live`` is set once a first pass runs.
    """

    def __init__(self):
        self.most = 0
        self.first_seen = {}
        self.live = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self):
        while not self._done.is_set():
            sends = 0
            for proc in psutil.process_iter(['cmdline']):
                cmdline = proc.info['cmdline'] or []
                if 'send' in cmdline and any(
                        arg.endswith('nova-vpmem-copy') for arg in cmdline):
                    sends += 1
                    for option in ('--live', '--with-record'):
                        if option in cmdline:
                            self.first_seen.setdefault(option,
                                                       time.monotonic())
            if '--live' in self.first_seen:
                self.live.set()
            self.most = max(self.most, sends)
            time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()


class TestHostCopyLimits(E2ETestCase):
    """Four servers leave one host at once, within its copy limits."""

    needs_copy = True
    copy_options = {
        'vpmem_copy_max_concurrent': 2,
        # 6 MiB of data per server at 1 MiB/s: the moves overlap.
        'vpmem_copy_bandwidth': 1,
    }

    def setUp(self):
        super().setUp()
        self.require_copy()

    def copy_waits(self, server_id):
        """The compute_vpmem_copy_wait events of the server's actions."""
        api = self.cloud.admin_api
        actions = api.api_get('/servers/%s/os-instance-actions' %
                              server_id).body['instanceActions']
        return [event for action in actions
                for event in api.api_get(
                    '/servers/%s/os-instance-actions/%s' % (
                        server_id, action['request_id'])
                ).body['instanceAction'].get('events', [])
                if event['event'] == 'compute_vpmem_copy_wait']

    def test_four_servers_leave_one_host_at_once(self):
        digests = {self.server: self.src_digest}
        for seed in (2, 3, 4):
            server = self.sc.boot(self.env.a)
            _, written = self.sc.write_pattern(server, seed=seed)
            digests[server] = written[0][1]

        with SendWatcher() as sends, \
                concurrent.futures.ThreadPoolExecutor(4) as pool:
            moves = dict(zip(digests, pool.map(
                lambda server: self.sc.migrate(server, copy=True),
                digests)))

        # Never more than the host's two copies of env.streams streams.
        self.assertGreater(sends.most, 0)
        self.assertLessEqual(sends.most, 2 * self.env.streams)
        waited = [server for server in digests if self.copy_waits(server)]
        self.assertGreaterEqual(len(waited), 1, 'no move waited for a copy')
        for server, (migration, _) in moves.items():
            self.assertEqual('finished', migration['status'],
                             self.sc.fault_message(server))
            _, old, dest, new = self.cloud.migration_namespaces(
                server, migration)
            self.assertEqual('hostB', dest.name)
            self.assertEqual(digests[server],
                             ns_mod.digest(new[0].backing, old[0].size))
            self.sc.confirm(server)
            self.assertTrue(ns_mod.is_zero(old[0].backing, old[0].size))
            self.assertEqual(digests[server],
                             ns_mod.digest(new[0].backing, old[0].size))


# The guest's writes while the first pass of a pre-copy reads its namespace:
# a separate process that holds the namespace open and overwrites random
# 4 KiB blocks for a few seconds.
_GUEST_WRITER = """
import os, random, sys, time
path, size, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
fd = os.open(path, os.O_RDWR)
end = time.monotonic() + seconds
while time.monotonic() < end:
    os.pwrite(fd, os.urandom(4096), random.randrange(size // 4096) * 4096)
    time.sleep(0.01)
"""


class TestPreCopy(E2ETestCase):
    """[libvirt]vpmem_precopy: a first pass while the server runs."""

    needs_copy = True
    # The pre-copy runs only for a guest that runs.
    running_guests = True
    copy_options = {
        'vpmem_precopy': True,
        # 8 MiB at 1 MiB/s: the first pass runs long enough to write into.
        'vpmem_precopy_bandwidth': 1,
    }

    def setUp(self):
        super().setUp()
        self.require_copy()

    def test_writes_during_the_first_pass_reach_the_destination(self):
        with SendWatcher() as sends, \
                concurrent.futures.ThreadPoolExecutor(1) as pool:
            move = pool.submit(self.sc.migrate, self.server, copy=True)
            self.assertTrue(sends.live.wait(120), 'no first pass ran')
            subprocess.run(
                [sys.executable, '-c', _GUEST_WRITER, self.src_ns.backing,
                 str(self.src_ns.size), '2'], check=True)
            written = time.monotonic()
            migration, _ = move.result()
        self.assertEqual('finished', migration['status'],
                         self.sc.fault_message(self.server))
        # The second pass started after the writes, with the record.
        self.assertGreater(sends.first_seen['--with-record'], written)
        changed = ns_mod.digest(self.src_ns.backing, self.src_ns.size)
        self.assertNotEqual(self.src_digest, changed)
        _, old, dest, new = self.cloud.migration_namespaces(
            self.server, migration)
        self.assertEqual('hostB', dest.name)
        self.assertEqual(changed, ns_mod.digest(new[0].backing,
                                                self.src_ns.size))
        self.sc.confirm(self.server)
        self.assertTrue(ns_mod.is_zero(old[0].backing, old[0].size))

    def test_first_pass_failure_keeps_the_server_on_its_host(self):
        self.env.arm(self.env.b, 'receive', 2 * MIB, 'fail')
        with SendWatcher() as sends:
            migration, _ = self.sc.migrate(self.server, copy=True)
        self.assertIn('--live', sends.first_seen)
        self.assertNotIn('--with-record', sends.first_seen)
        self.assert_rolled_back(migration)


class TestCopyTimeout(E2ETestCase):

    copy_timeout = 5

    needs_copy = True

    def setUp(self):
        super().setUp()
        self.require_copy()

    def test_copy_timeout(self):
        self.env.arm(self.env.b, 'receive', 2 * MIB, 'hold')
        migration, seconds = self.sc.migrate(self.server, copy=True)
        self.assertGreaterEqual(seconds, self.copy_timeout)
        self.assert_rolled_back(migration)
