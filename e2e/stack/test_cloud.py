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

"""The proof on the real cloud, one test per step of ``scenario.Tour``.

Needs the cloud up (``tools/run-cloud-tests`` brings it up and down). The
steps build on each other, so once one fails the later ones are skipped
with the name of the step that failed.
"""

import unittest

from e2e.stack import base
from e2e.stack import computes
from e2e.stack import scenario

# The instance the helper command below acts for: the gate refuses a send
# before the helper reads the owners file, whichever instance it names.
INSTANCE = '7b1f0c2e-3d4a-4e5b-8c6d-9e0f1a2b3c4d'
# The deployment guide's readiness check names an instance that does not
# exist.
NO_INSTANCE = '00000000-0000-0000-0000-000000000000'
EXIT_DENIED = 6


class StepsTestCase(unittest.TestCase):
    """Runs the steps of ``steps_factory()`` one per test, in order."""

    steps_factory = None
    steps = None
    broken = None

    @classmethod
    def setUpClass(cls):
        cls.steps = cls.steps_factory()

    def _run(self, step_name):
        cls = type(self)
        if cls.broken:
            self.skipTest('an earlier step failed: %s' % cls.broken)
        step_fn = getattr(cls.steps, step_name)
        cls.broken = step_name          # until it passes
        try:
            step = step_fn()
        except Exception:
            self._print_nova_errors()
            raise
        if not step.ok:
            self._print_nova_errors()
        print('\n  %s: %s | %s | guest: %s' % (
            'PASS' if step.ok else 'FAIL', step.name, step.detail,
            scenario.format_line(step.line)), flush=True)
        self.assertTrue(step.ok, '%s: %s; guest line %s' % (
            step.name, step.detail, step.line))
        cls.broken = None

    @staticmethod
    def _print_nova_errors():
        print('\n  the last ERROR lines of the Nova logs:', flush=True)
        for line in base.nova_errors():
            print('    %s' % line, flush=True)


class CloudTourTestCase(StepsTestCase):

    steps_factory = scenario.Tour

    def test_1_boot(self):
        self._run('boot')

    def test_2_tenant_cannot_migrate(self):
        self._run('tenant_cannot_migrate')

    def test_3_migrate_with_copy(self):
        self._run('migrate_with_copy')

    def test_4_resize_to_larger(self):
        self._run('resize_to_larger')

    def test_5_stop_start(self):
        self._run('stop_start')

    def test_6_hard_reboot(self):
        self._run('hard_reboot')

    def test_7_resize_and_revert(self):
        self._run('resize_and_revert')

    def test_8_migrate_without_copy(self):
        self._run('migrate_without_copy')

    def test_9_delete(self):
        self._run('delete')


class CopyKeyTestCase(unittest.TestCase):
    """The copy's own ssh key runs the helper's gate and nothing else.

    Every copy of the tour, the upgrade and the crash steps logs in with
    this key; here it asks each compute host for something else.
    """

    def _ssh(self, host, *command):
        return base.run(
            'ssh', '-F', '/dev/null', '-i', computes.COPY_KEY, '-o',
            'IdentitiesOnly=yes', '-o', 'BatchMode=yes', '-o',
            'StrictHostKeyChecking=yes', '-o',
            'UserKnownHostsFile=%s' % (computes.CLIENT_DIR / 'known_hosts'),
            '%s@%s' % (computes.NOVA_USER, host.address), *command,
            check=False)

    def test_copy_key_opens_no_shell_and_reads_no_namespace(self):
        for host in computes.HOSTS:
            ns = host.namespaces[0]
            for command in ((), ('id',), ('cat', ns.devpath),
                            (host.venv_bin / 'nova-vpmem-copy', '--instance',
                             INSTANCE, 'send', '--namespace', ns.name,
                             '--length', '4096')):
                out = self._ssh(host, *command)
                print('\n  %s: ssh %s -> exit %d: %s' % (
                    host.name, ' '.join(map(str, command)) or '(shell)',
                    out.returncode, out.stderr.strip()[-120:]), flush=True)
                self.assertEqual(EXIT_DENIED, out.returncode, out.stderr)
                self.assertEqual('', out.stdout)
                self.assertIn('this key only runs nova-vpmem-copy',
                              out.stderr)

    def test_readiness_check_of_the_deployment_guide(self):
        """Each host asks the other's helper, as the guide's check does.

        The answer of a ready host is the helper's own refusal: ssh took
        the copy's key and the pinned host key, the gate ran the helper
        through sudo, and the helper found the namespace and its owner.
        """
        known_hosts = computes.CLIENT_DIR / 'known_hosts'
        for source, dest in zip(computes.HOSTS, computes.HOSTS[::-1]):
            ns = dest.namespaces[0]
            out = source.run_in(
                'sudo', '-u', computes.NOVA_USER, 'ssh', '-i',
                computes.COPY_KEY_IN_HOME, '-o', 'IdentitiesOnly=yes', '-o',
                'BatchMode=yes', '-o', 'StrictHostKeyChecking=yes', '-o',
                'UserKnownHostsFile=%s' % known_hosts, dest.address,
                'nova-vpmem-copy', '--instance', NO_INSTANCE, 'check',
                '--namespace', ns.name, '--length', '4096', check=False)
            print('\n  %s -> %s: exit %d: %s' % (
                source.name, dest.name, out.returncode, out.stderr.strip()),
                flush=True)
            self.assertEqual(EXIT_DENIED, out.returncode, out.stderr)
            self.assertEqual('', out.stdout)
            self.assertIn('this host did not give namespace %s to instance '
                          '%s for its move here' % (ns.name, NO_INSTANCE),
                          out.stderr)
